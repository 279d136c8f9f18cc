"""The analysis behind `geo3d report`: configurations (compressor@tap [preset]) over training seeds, success with
95% Wilson intervals, and paired comparisons on the same (task, init state) episodes.

Comparisons, each A − B paired per training seed (seed s of A against seed s of B) and pooled over the seeds both
have, per suite and over all suites:
- every configuration against `none` of the same preset: does the geometry help at all?
- `<compressor>@info_sharing` against `<compressor>@encoder`: is it MapAnything's 3D (info_sharing) or just more
  visual features (its DINOv2 encoder, the same width and grid, no exchange between views)?
Two evaluations are paired only when they ran the same episodes with the same outcome settings
(report.OUTCOME_SETTINGS); otherwise the comparison is refused and says why. Everything returned is plain JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from geo3d.core.taps import DEFAULT_TAP, ENCODER, run_label
from geo3d.evaluation.report import RunSummary, SuiteEval
from geo3d.evaluation.stats import (ALPHA, CONFIDENCE, POWER, PairedTable, mcnemar_exact, mean_sd,
                                    newcombe_paired, paired_table, pairs_needed, seeds_needed, wilson)

ALL = "all"  # the pooled row over every suite both sides evaluated
METHODS = {
    "success_interval": f"Wilson score, {CONFIDENCE:.0%}",
    "paired_difference_interval": f"Newcombe hybrid score for paired proportions (method 10, 1998), {CONFIDENCE:.0%}",
    "test": "McNemar exact conditional (two-sided binomial test of the discordant pairs)",
    "power": f"Connor (1987) pairs for McNemar at alpha={ALPHA:.2f}, power={POWER:.0%}; seeds: normal approximation "
             "on the per-seed differences",
    "seeds": "mean ± sd of per-seed success rates; the pooled interval treats the seeds' episodes as one sample "
             "(it ignores seed-to-seed variance: read it with the sd)",
}


@dataclass
class Config:
    """One configuration; its runs are its training seeds."""

    compressor: str
    tap: str | None
    preset: str
    runs: dict[int | None, RunSummary]

    @property
    def label(self) -> str:
        return run_label(self.compressor, self.tap)

    @property
    def name(self) -> str:
        return f"{self.label} [{self.preset}]"


def configurations(runs: list[RunSummary]) -> tuple[list[Config], list[str]]:
    """Runs grouped by (compressor, tap, preset); flags for two runs of one configuration with the same seed."""
    configs: dict[tuple, Config] = {}
    flags = []
    for r in runs:
        c = configs.setdefault((r.compressor, r.tap, r.preset), Config(r.compressor, r.tap, r.preset, {}))
        if r.seed in c.runs:
            flags.append(f"{c.name}: two runs with seed {r.seed} ({c.runs[r.seed].run_dir} and {r.run_dir}); the "
                         f"second is left out (a rerun of the same seed is not another sample)")
            continue
        c.runs[r.seed] = r
    return list(configs.values()), flags


def _suites(runs: list[RunSummary]) -> list[str]:
    """Suites every run of the list evaluated."""
    sets = [set(r.evals) for r in runs]
    return sorted(set.intersection(*sets)) if sets else []


def success_rows(config: Config) -> list[dict[str, Any]]:
    """Per suite (and pooled over the suites every seed evaluated): per-seed rates, mean ± sd, pooled Wilson."""
    runs = list(config.runs.values())
    rows = []
    suites = sorted({s for r in runs for s in r.evals})
    common = _suites(runs)
    for suite in [*suites, *([ALL] if len(common) > 1 else [])]:
        per_seed = {}
        for seed, r in config.runs.items():
            evals = [r.evals[s] for s in common] if suite == ALL else [r.evals[suite]] if suite in r.evals else []
            if evals:
                per_seed[seed] = (sum(e.successes for e in evals), sum(e.episodes for e in evals))
        k, n = sum(v[0] for v in per_seed.values()), sum(v[1] for v in per_seed.values())
        rates = [v[0] / v[1] for v in per_seed.values()]
        m, sd = mean_sd(rates)
        lo, hi = wilson(k, n)
        rows.append({"config": config.name, "label": config.label, "compressor": config.compressor, "tap": config.tap,
                     "preset": config.preset, "suite": suite, "seeds": list(per_seed), "per_seed": {
                         str(s): {"successes": v[0], "episodes": v[1], "rate": v[0] / v[1]} for s, v in per_seed.items()},
                     "successes": k, "episodes": n, "rate": k / n, "ci": [lo, hi], "seed_mean": m, "seed_sd": sd})
    return rows


def comparison_pairs(configs: list[Config]) -> list[tuple[Config, Config, str]]:
    """(A, B, question) for every comparison the configurations allow."""
    by_key = {(c.compressor, c.tap, c.preset): c for c in configs}
    pairs = []
    for c in configs:
        base = by_key.get(("none", None, c.preset))
        if c.compressor != "none" and base is not None:
            pairs.append((c, base, f"does {c.label} beat no geometry?"))
    for c in configs:
        if c.tap == ENCODER and (three_d := by_key.get((c.compressor, DEFAULT_TAP, c.preset))) is not None:
            pairs.append((three_d, c, f"3D or 2D: {three_d.label} against its DINOv2 control {c.label}?"))
    return pairs


def _refusal(a: SuiteEval, b: SuiteEval) -> str | None:
    """Why two evaluations cannot be paired, or None."""
    diffs = [f"{k}: {a.settings.get(k)!r} vs {b.settings.get(k)!r}" for k in a.settings
             if a.settings.get(k) != b.settings.get(k)]
    if diffs:
        return "evaluated with different settings (" + "; ".join(diffs) + ")"
    if set(a.outcomes) != set(b.outcomes):
        return (f"evaluated on different init-state sets ({len(a.outcomes)} vs {len(b.outcomes)} episodes, "
                f"{len(set(a.outcomes) ^ set(b.outcomes))} not in both)")
    seeds = [k for k in a.outcomes if a.seeds.get(k) is not None and b.seeds.get(k) is not None
             and a.seeds[k] != b.seeds[k]]
    if seeds:
        return f"episode seeds differ (e.g. task {seeds[0][0]} init state {seeds[0][1]})"
    return None


def compare(a: Config, b: Config, question: str) -> list[dict[str, Any]]:
    """A − B per suite and pooled: per-seed paired tables, pooled table, interval, exact McNemar, power."""
    seeds = [s for s in a.runs if s in b.runs]
    base = {"a": a.name, "b": b.name, "question": question, "seeds": seeds,
            "seeds_only_in_a": [s for s in a.runs if s not in b.runs],
            "seeds_only_in_b": [s for s in b.runs if s not in a.runs]}
    if not seeds:
        return [{**base, "suite": ALL, "refused": f"no training seed in common ({list(a.runs)} vs {list(b.runs)})"}]
    suites = _suites([a.runs[s] for s in seeds] + [b.runs[s] for s in seeds])
    if not suites:
        return [{**base, "suite": ALL, "refused": "no suite evaluated by every run of both"}]
    out, per_suite = [], {}
    for suite in suites:
        tables, left_out = {}, []
        for s in seeds:
            ea, eb = a.runs[s].evals[suite], b.runs[s].evals[suite]
            why = _refusal(ea, eb)
            if why:
                left_out.append(f"seed {s}: {why}")
            else:
                tables[s] = paired_table(ea.outcomes, eb.outcomes)
        if not tables:
            out.append({**base, "suite": suite, "refused": "; ".join(left_out)})
            continue
        per_suite[suite] = tables
        out.append({**base, "suite": suite, "seeds": list(tables), "left_out": left_out, **_stats(tables)})
    common = [s for s in seeds if all(s in t for t in per_suite.values())]
    if len(per_suite) > 1 and common:
        pooled = {s: sum((t[s] for t in per_suite.values()), PairedTable(0, 0, 0, 0)) for s in common}
        out.append({**base, "suite": ALL, "suites": sorted(per_suite), "seeds": common, "left_out": [],
                    **_stats(pooled)})
    return out


def _stats(tables: dict[Any, PairedTable]) -> dict[str, Any]:
    t = sum(tables.values(), PairedTable(0, 0, 0, 0))
    lo, hi = newcombe_paired(t)
    p = mcnemar_exact(t.b, t.c)
    diffs = [x.difference for x in tables.values()]
    m, sd = mean_sd(diffs)
    return {"pairs": t.n, "table": {"a": t.a, "b": t.b, "c": t.c, "d": t.d}, "difference": t.difference,
            "ci": [lo, hi], "p_mcnemar": p, "significant": p < ALPHA,
            "per_seed_difference": {str(s): x.difference for s, x in tables.items()},
            "seed_mean_difference": m, "seed_sd_difference": sd,
            "pairs_needed": pairs_needed(t), "seeds_needed": seeds_needed(diffs)}


def evaluation_flags(runs: list[RunSummary]) -> list[str]:
    """Per suite: runs evaluated with other outcome settings or another init-state set than most runs."""
    flags = []
    for suite in sorted({s for r in runs for s in r.evals}):
        evals = {r.run_dir.name: r.evals[suite] for r in runs if suite in r.evals}
        keys = {name: (tuple(sorted(e.settings.items())), tuple(sorted(e.outcomes))) for name, e in evals.items()}
        common = max(set(keys.values()), key=list(keys.values()).count)
        ref = next(evals[n] for n, k in keys.items() if k == common)
        for name, key in keys.items():
            if key == common:
                continue
            e = evals[name]
            what = [f"{k}={e.settings.get(k)!r} (others {ref.settings.get(k)!r})" for k in e.settings
                    if e.settings.get(k) != ref.settings.get(k)]
            if set(e.outcomes) != set(ref.outcomes):
                what.append(f"{e.episodes} episodes / init states, {len(set(e.outcomes) ^ set(ref.outcomes))} not "
                            f"among the others' {ref.episodes}")
            flags.append(f"{suite}: {name} was evaluated differently from the other runs ({'; '.join(what)}): "
                         "it is not paired with them")
    return flags


def analyse(runs: list[RunSummary]) -> dict[str, Any]:
    """Everything the renderer draws and report.json holds."""
    configs, flags = configurations(runs)
    comparisons = [row for a, b, q in comparison_pairs(configs) for row in compare(a, b, q)]
    return {"configurations": [{"config": c.name, "label": c.label, "compressor": c.compressor, "tap": c.tap,
                                "preset": c.preset, "seeds": list(c.runs),
                                "runs": [str(r.run_dir) for r in c.runs.values()]} for c in configs],
            "success": [row for c in configs for row in success_rows(c) if row["episodes"]],
            "comparisons": [c for c in comparisons if "refused" not in c],
            "refused": [c for c in comparisons if "refused" in c],
            "flags": flags + evaluation_flags(runs), "methods": METHODS}


def verdict(c: dict[str, Any]) -> str:
    """'qformer@info_sharing − none on libero_spatial: +2.4 pts [−0.4, +5.2], p = 0.11, not significant at 500
    paired episodes (2 seeds)'."""
    a, b = c["a"].split(" [")[0], c["b"].split(" [")[0]
    lo, hi = c["ci"]
    sig = "significant" if c["significant"] else "not significant"
    n_seeds = len(c["seeds"])
    left = f"; left out: {'; '.join(c['left_out'])}" if c.get("left_out") else ""
    return (f"{a} − {b} on {c['suite']}: {_pts(c['difference'])} pts [{_pts(lo)}, {_pts(hi)}], "
            f"p = {_p(c['p_mcnemar'])}, {sig} at {c['pairs']} paired episodes ({n_seeds} seed{'s' * (n_seeds != 1)})"
            f"{left}")


def power_line(c: dict[str, Any]) -> str:
    """How many paired episodes (and seeds) a difference of the observed size needs."""
    if c["pairs_needed"] is None:
        return f"{c['a']} vs {c['b']} on {c['suite']}: no difference observed, so no sample size to detect it"
    line = (f"a difference of {_pts(c['difference'])} pts needs ~{c['pairs_needed']} paired episodes for "
            f"{POWER:.0%} power at α = {ALPHA:.2f} (have {c['pairs']})")
    if c["seeds_needed"] is not None:
        line += (f"; at the observed seed-to-seed spread (sd {100 * c['seed_sd_difference']:.1f} pts) "
                 f"~{c['seeds_needed']} seeds (have {len(c['seeds'])})")
    return line


def _pts(x: float) -> str:
    s = f"{100 * x:+.1f}"
    return s.replace("-", "−")


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"
