"""The statistics behind `geo3d report`: success rates with intervals, paired comparisons, power. Pure python.

Why these methods (binary episode outcomes, tens to hundreds of episodes, rates often near 0 or 1):
- one success rate: the Wilson score interval (never outside [0, 1], sane at 0/n and n/n, unlike Wald);
- a difference between two policies evaluated on the SAME (task, init state) episodes: Newcombe's hybrid score
  ("square-and-add") interval for paired proportions, method 10 of Newcombe (1998, Stat Med 17:2635), with its
  continuity-corrected correlation estimate (as in Fagerland, Lydersen & Laake 2014 and the R package
  contingencytables); it uses the pairing, so it is much narrower than an unpaired interval when outcomes agree;
- the test: McNemar's exact conditional test (two-sided binomial test of the discordant pairs, b vs c, at 1/2);
- the power line: Connor (1987)'s sample size for McNemar's test, and for seeds a normal approximation on the
  per-seed differences.
scipy is not a dependency for this: the binomial sums are exact integer arithmetic, the normal quantiles come from
the standard library (statistics.NormalDist).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist, mean, stdev
from typing import Hashable, Mapping

from geo3d.core.errors import Geo3dError

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
POWER = 0.80


def z_value(confidence: float = CONFIDENCE) -> float:
    """The two-sided normal quantile (1.95996... for 95%)."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (no continuity correction)."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson: need 0 <= successes <= n and n > 0, got {successes}/{n}")
    z = z_value(confidence)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo, hi = centre - half, centre + half
    # exact ends at 0/n and n/n (the formula gives them up to float rounding)
    return (0.0 if successes == 0 else max(0.0, lo)), (1.0 if successes == n else min(1.0, hi))


def binomial_two_sided_half(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n trials at p = 1/2: 2 * P(X <= min(k, n-k)), capped at 1."""
    if n == 0:
        return 1.0
    m = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(m + 1))
    return min(1.0, 2 * tail / 2 ** n)  # exact integers; the one division is correctly rounded


def mcnemar_exact(b: int, c: int) -> float:
    """McNemar's exact (conditional) test: two-sided p of the b vs c discordant pairs."""
    return binomial_two_sided_half(b, b + c)


@dataclass(frozen=True)
class PairedTable:
    """Outcomes of policy X and baseline Y on the same episodes: a both succeed, b only X, c only Y, d neither."""

    a: int
    b: int
    c: int
    d: int

    @property
    def n(self) -> int:
        return self.a + self.b + self.c + self.d

    @property
    def difference(self) -> float:
        """Success rate of X minus that of Y."""
        return (self.b - self.c) / self.n

    def __add__(self, other: "PairedTable") -> "PairedTable":
        return PairedTable(self.a + other.a, self.b + other.b, self.c + other.c, self.d + other.d)


class UnpairedError(Geo3dError):
    """Two evaluations that did not run the same episodes cannot be compared episode by episode."""


def paired_table(x: Mapping[Hashable, bool], y: Mapping[Hashable, bool]) -> PairedTable:
    """The 2x2 table of two evaluations keyed by episode (e.g. (task, init state)); refused unless both ran
    exactly the same episodes."""
    if set(x) != set(y):
        only_x, only_y = sorted(map(str, set(x) - set(y))), sorted(map(str, set(y) - set(x)))
        raise UnpairedError(f"the evaluations ran different episodes ({len(only_x)} only in the first, e.g. "
                            f"{only_x[:3]}; {len(only_y)} only in the second, e.g. {only_y[:3]}): not paired")
    if not x:
        raise UnpairedError("no episodes to pair")
    counts = {(True, True): 0, (True, False): 0, (False, True): 0, (False, False): 0}
    for key, ok in x.items():
        counts[(bool(ok), bool(y[key]))] += 1
    return PairedTable(counts[(True, True)], counts[(True, False)], counts[(False, True)], counts[(False, False)])


def newcombe_paired(t: PairedTable, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Newcombe's hybrid score interval (method 10) for the paired difference p_X - p_Y."""
    n = t.n
    p1, p2 = (t.a + t.b) / n, (t.a + t.c) / n
    l1, u1 = wilson(t.a + t.b, n, confidence)
    l2, u2 = wilson(t.a + t.c, n, confidence)
    phi = _phi_corrected(t)
    d = p1 - p2
    lower = d - math.sqrt(max(0.0, (p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2)))
    upper = d + math.sqrt(max(0.0, (p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1)))
    return max(-1.0, lower), min(1.0, upper)


def _phi_corrected(t: PairedTable) -> float:
    """The correlation of the two marginal estimates, with Newcombe's continuity correction of a positive ad-bc
    (reduced by n/2, floored at 0); 0 when a margin is empty."""
    margins = ((t.a + t.b), (t.c + t.d), (t.a + t.c), (t.b + t.d))
    if 0 in margins:
        return 0.0
    cross = t.a * t.d - t.b * t.c
    if cross > t.n / 2:
        cross -= t.n / 2
    elif cross >= 0:
        cross = 0
    return cross / math.sqrt(math.prod(margins))


def pairs_needed(t: PairedTable, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Paired episodes McNemar's test needs to detect the observed difference with `power` at level `alpha`
    (Connor 1987, from the observed discordance); None when no difference was observed."""
    psi, delta = (t.b + t.c) / t.n, (t.b - t.c) / t.n
    if delta == 0:
        return None
    za, zb = NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(power)
    return math.ceil((za * math.sqrt(psi) + zb * math.sqrt(max(0.0, psi - delta * delta))) ** 2 / delta ** 2)


def seeds_needed(differences: list[float], alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Training seeds needed to detect the mean per-seed difference given its spread across seeds (normal
    approximation, two-sided); None with fewer than 2 seeds, no spread, or no difference."""
    if len(differences) < 2:
        return None
    m, s = mean(differences), stdev(differences)
    if m == 0 or s == 0:
        return None
    za, zb = NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(power)
    return max(2, math.ceil(((za + zb) * s / m) ** 2))


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return mean(values), (stdev(values) if len(values) > 1 else None)
