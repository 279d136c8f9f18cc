"""The report's statistics on known answers: McNemar by hand and from the literature, Wilson at the edges,
Newcombe's paired interval against the published example, coverage and power by simulation, unpaired refused."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geo3d.evaluation.stats import (PairedTable, UnpairedError, mcnemar_exact, newcombe_paired, paired_table,
                                    pairs_needed, seeds_needed, wilson, z_value)


def test_mcnemar_exact_by_hand():
    # b=1, c=7: 2 * (C(8,0) + C(8,1)) / 2^8 = 18/256 (Fagerland et al. 2014's airway example: 0.070)
    assert mcnemar_exact(1, 7) == 18 / 256
    assert mcnemar_exact(7, 1) == 18 / 256
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(3, 3) == 1.0  # no evidence either way
    assert mcnemar_exact(0, 5) == 2 / 32  # the most extreme of 5 discordant pairs
    # contingencytables' test table [[59, 6], [16, 80]]: "The McNemar exact conditional test: P = 0.052479"
    assert round(mcnemar_exact(6, 16), 6) == 0.052479
    assert 0 < mcnemar_exact(200, 300) < 1e-5  # large counts stay exact (integer sums), no overflow


def test_wilson_at_the_edges_and_a_known_value():
    z = z_value()
    assert z == pytest.approx(1.959963984540054)
    assert wilson(0, 10) == (0.0, pytest.approx(z * z / (10 + z * z)))
    assert wilson(10, 10) == (pytest.approx(10 / (10 + z * z)), 1.0)
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(1 - hi) and (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    with pytest.raises(ValueError):
        wilson(0, 0)


def test_newcombe_paired_matches_the_published_example():
    # contingencytables::Newcombe_square_and_add_CI_paired_2x2 on [[59, 6], [16, 80]]:
    # "estimate = -0.0621 (95% CI -0.1186 to -0.0046)"
    t = PairedTable(59, 6, 16, 80)
    lo, hi = newcombe_paired(t)
    assert round(t.difference, 4) == -0.0621 and (round(lo, 4), round(hi, 4)) == (-0.1186, -0.0046)
    # swapping the policies mirrors the interval
    lo2, hi2 = newcombe_paired(PairedTable(59, 16, 6, 80))
    assert (lo2, hi2) == pytest.approx((-hi, -lo))
    assert newcombe_paired(PairedTable(0, 0, 0, 20)) == pytest.approx((-z_value() ** 2 / (20 + z_value() ** 2),
                                                                       z_value() ** 2 / (20 + z_value() ** 2)))


def test_newcombe_paired_covers_95_percent_by_simulation():
    """Correlated outcomes (the same episodes), true difference +0.05: the interval covers it ~95% of the time."""
    rng = np.random.default_rng(0)
    probs = [0.45, 0.10, 0.05, 0.40]  # a, b, c, d cells: p_X = 0.55, p_Y = 0.50
    hits, trials = 0, 2000
    for counts in rng.multinomial(200, probs, size=trials):
        lo, hi = newcombe_paired(PairedTable(*map(int, counts)))
        hits += lo <= 0.05 <= hi
    assert 0.93 <= hits / trials <= 0.975, hits / trials


def test_pairs_needed_gives_the_power_it_promises():
    """Connor's n for McNemar: at that n the exact test rejects ~80% of the time (simulated)."""
    t = PairedTable(450, 75, 25, 450)  # psi = 0.10, delta = 0.05
    n = pairs_needed(t)
    za, zb = 1.959963984540054, 0.8416212335729143
    assert n == math.ceil((za * math.sqrt(0.1) + zb * math.sqrt(0.1 - 0.0025)) ** 2 / 0.0025) == 312
    rng = np.random.default_rng(1)
    counts = rng.multinomial(n, [0.45, 0.075, 0.025, 0.45], size=1000)
    power = np.mean([mcnemar_exact(int(b), int(c)) < 0.05 for _, b, c, _ in counts])
    assert 0.72 <= power <= 0.86, power  # the exact test is a little conservative
    assert pairs_needed(PairedTable(5, 3, 3, 5)) is None  # no observed difference: no sample size


def test_seeds_needed():
    assert seeds_needed([0.10]) is None and seeds_needed([0.1, 0.1]) is None and seeds_needed([0.1, -0.1]) is None
    # mean 0.05, sd 0.05: ((1.96 + 0.84) * 1)^2 = 7.85 -> 8
    assert seeds_needed([0.0, 0.05, 0.10]) == 8


def test_unpaired_evaluations_are_refused():
    x = {(0, 0): True, (0, 1): False}
    with pytest.raises(UnpairedError, match="ran different episodes"):
        paired_table(x, {(0, 0): True, (0, 2): False})
    with pytest.raises(UnpairedError, match="no episodes"):
        paired_table({}, {})
    t = paired_table({(0, 0): True, (0, 1): False, (1, 0): True}, {(0, 0): True, (0, 1): True, (1, 0): False})
    assert t == PairedTable(1, 1, 1, 0) and t.difference == 0
