"""`geo3d report`: compare runs (compressor x encoder tap x seed) with their uncertainty, in one PNG, one markdown
report and one JSON.

Per run it reads RUN_DIR/metrics.jsonl (written by train/metrics.py), RUN_DIR/resolved_config.yaml (compressor,
preset, train.seed), RUN_DIR/provenance.json (the store the run trained on, hence its encoder tap) and every eval
result RUN_DIR/eval*/results.json (written by `geo3d eval`, whose default --out for a run's checkpoint is
RUN_DIR/eval_<suite>_step<N>/): per suite the complete evaluation of the latest step, with its episodes. The
analysis (seeds, intervals, paired tests) is evaluation/report_compare.py; drawing and writing the report
(`write_report`) is evaluation/report_render.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from geo3d.core.errors import Geo3dError
from geo3d.core.taps import run_label, tap_of
from geo3d.policy.run_dir import METRICS_FILE, read_metrics, window_means

# Keys of train/metrics.py records: loss; grad_norm.compressor (null when the compressor got no gradient, e.g.
# `none`); geom_attention_mass = [one value per DiT layer].
# Eval settings that change an episode's outcome (results.json "settings"): two evaluations are paired only when
# these agree (and they ran the same (task, init state) episodes).
OUTCOME_SETTINGS = ("max_steps", "settle_steps", "replan_steps", "gripper_sign", "binarize_gripper", "render_size",
                    "seed")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass
class SuiteEval:
    """One complete `geo3d eval` result of a run on a suite: what the pairing and the intervals need."""

    suite: str
    step: int
    path: str
    successes: int
    episodes: int
    settings: dict[str, Any]                      # OUTCOME_SETTINGS of the evaluation
    outcomes: dict[tuple[int, int], bool]         # (task id, init state) -> success
    seeds: dict[tuple[int, int], int | None]      # (task id, init state) -> episode seed (None: not recorded)

    def as_summary(self) -> dict[str, Any]:
        return {"episodes": self.episodes, "successes": self.successes, "success_rate": self.successes / self.episodes,
                "step": self.step, "path": self.path}


@dataclass
class RunSummary:
    """What the report needs from one run directory."""

    run_dir: Path
    compressor: str
    tap: str | None = None  # the encoder tap of the store it trained on; None for `none` (reads no geometry)
    preset: str = "?"  # design preset of the run (configs/preset/<name>.yaml)
    seed: int | None = None  # train.seed
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    grad_steps: list[int] = field(default_factory=list)
    grad_compressor: list[float] = field(default_factory=list)
    geom_attn: dict[int, list[float]] = field(default_factory=dict)   # DiT layer -> values over logged steps
    evals: dict[str, SuiteEval] = field(default_factory=dict)         # suite -> latest complete evaluation

    @property
    def config_label(self) -> str:
        """`qformer@info_sharing`; `none` has no tap."""
        return run_label(self.compressor, self.tap)

    @property
    def label(self) -> str:
        seed = "?" if self.seed is None else self.seed
        return f"{self.config_label} [{self.preset}] s{seed} ({self.run_dir.name})"

    @property
    def success(self) -> dict[str, dict[str, Any]]:
        return {s: e.as_summary() for s, e in self.evals.items()}

    def tail_mean(self, values: list[float], frac: float = 0.1) -> float | None:
        """Mean of the last `frac` of a curve: a noise-robust 'final' value."""
        if not values:
            return None
        return window_means(values, frac)[1]


def _recorded(run_dir: Path, key: str) -> Any:
    """A value of the run's resolved_config.yaml (e.g. model.compressor.type, preset), None when absent."""
    cfg = run_dir / "resolved_config.yaml"
    if not cfg.exists():
        return None

    return OmegaConf.select(OmegaConf.load(cfg), key, default=None)


def _tap(run_dir: Path, compressor: str) -> str | None:
    """The tap of the store the run trained on (its last launch in provenance.json); None for `none`."""
    if compressor == "none":
        return None
    try:
        launches = json.loads((run_dir / "provenance.json").read_text())
        store = launches[-1].get("store") or {}
    except (OSError, ValueError, IndexError, AttributeError):
        return "?"
    return store.get("tap") or tap_of(store.get("encoder")) or "?"


def _suite_eval(path: Path, res: dict[str, Any]) -> SuiteEval:
    episodes = res["episodes"]
    outcomes = {(int(e["task_id"]), int(e["episode"])): bool(e["success"]) for e in episodes}
    seeds = {(int(e["task_id"]), int(e["episode"])): e.get("seed") for e in episodes}
    settings = {k: (res.get("settings") or {}).get(k) for k in OUTCOME_SETTINGS}
    return SuiteEval(res["suite"], int(res.get("step") or 0), str(path), sum(outcomes.values()), len(outcomes),
                     settings, outcomes, seeds)


def _eval_results(run_dir: Path) -> dict[str, SuiteEval]:
    """Per suite, the complete evaluation of the latest checkpoint step found under RUN_DIR/eval*/."""
    out: dict[str, SuiteEval] = {}
    for path in sorted(run_dir.glob("eval*/results.json")):
        try:
            res = json.loads(path.read_text())
            ev = _suite_eval(path, res)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            print(f"warning: {path} is not a `geo3d eval` result ({e}), skipped")
            continue
        if not res.get("complete") or not ev.episodes:
            print(f"warning: {path} is an incomplete evaluation (resume it with `geo3d eval --resume`), skipped")
            continue
        if ev.suite not in out or ev.step >= out[ev.suite].step:
            out[ev.suite] = ev
    return out


def load_run(run_dir: str | Path) -> RunSummary:
    run_dir = Path(run_dir)
    metrics = run_dir / METRICS_FILE
    if not metrics.exists():
        raise Geo3dError(f"{run_dir} is not a training run: {METRICS_FILE} is missing; pass run directories "
                         "made by `geo3d train --out RUN_DIR`")
    compressor = str(_recorded(run_dir, "model.compressor.type") or "?")
    seed = _recorded(run_dir, "train.seed")
    run = RunSummary(run_dir, compressor, _tap(run_dir, compressor), str(_recorded(run_dir, "preset") or "?"),
                     None if seed is None else int(seed))
    for rec in read_metrics(run_dir):
        step = rec.get("step")
        if step is None:
            continue
        if (loss := _number(rec.get("loss"))) is not None:
            run.steps.append(int(step))
            run.loss.append(loss)
        grad = rec.get("grad_norm")
        if isinstance(grad, dict) and (g := _number(grad.get("compressor"))) is not None:
            run.grad_steps.append(int(step))
            run.grad_compressor.append(g)
        for layer, mass in enumerate(rec.get("geom_attention_mass") or []):
            if (m := _number(mass)) is not None:
                run.geom_attn.setdefault(layer, []).append(m)
    run.evals = _eval_results(run_dir)
    return run
