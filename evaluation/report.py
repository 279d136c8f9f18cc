"""`geo3d report`: compare runs (one per compressor) in one PNG and one markdown table.

Per run it reads RUN_DIR/metrics.jsonl (written by train/metrics.py), RUN_DIR/resolved_config.yaml
(model.compressor.type and preset name the run) and every eval result RUN_DIR/eval*/results.json (written by
`geo3d eval`, whose default --out for a run's checkpoint is RUN_DIR/eval_<suite>_step<N>/). Panels: training loss,
gradient norm reaching the compressor, attention mass on geometry tokens per DiT layer, success per suite.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geo3d.core.errors import Geo3dError
from geo3d.policy.run_dir import METRICS_FILE, read_metrics, window_means

# Keys of train/metrics.py records: loss; grad_norm.compressor (null when the compressor got no gradient, e.g.
# `none`); geom_attention_mass = [one value per DiT layer].


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass
class RunSummary:
    """What the report needs from one run directory."""

    run_dir: Path
    label: str
    compressor: str
    preset: str = "?"  # design preset of the run (configs/preset/<name>.yaml)
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    grad_steps: list[int] = field(default_factory=list)
    grad_compressor: list[float] = field(default_factory=list)
    geom_attn: dict[int, list[float]] = field(default_factory=dict)   # DiT layer -> values over logged steps
    success: dict[str, dict[str, Any]] = field(default_factory=dict)  # suite -> eval summary

    def tail_mean(self, values: list[float], frac: float = 0.1) -> float | None:
        """Mean of the last `frac` of a curve: a noise-robust 'final' value."""
        if not values:
            return None
        return window_means(values, frac)[1]


def _recorded(run_dir: Path, key: str) -> str:
    """A value of the run's resolved_config.yaml (e.g. model.compressor.type, preset), "?" when absent."""
    cfg = run_dir / "resolved_config.yaml"
    if not cfg.exists():
        return "?"
    from omegaconf import OmegaConf

    value = OmegaConf.select(OmegaConf.load(cfg), key, default=None)
    return str(value) if value is not None else "?"


def _eval_results(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Per suite, the complete evaluation of the latest checkpoint step found under RUN_DIR/eval*/."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(run_dir.glob("eval*/results.json")):
        try:
            res = json.loads(path.read_text())
            suite, summary, step = res["suite"], res["summary"], res.get("step") or 0
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            print(f"warning: {path} is not a `geo3d eval` result ({e}), skipped")
            continue
        if not res.get("complete") or summary.get("success_rate") is None:
            print(f"warning: {path} is an incomplete evaluation (resume it with `geo3d eval --resume`), skipped")
            continue
        if suite not in out or step >= out[suite]["step"]:
            out[suite] = {**summary, "step": step, "path": str(path)}
    return out


def load_run(run_dir: str | Path) -> RunSummary:
    run_dir = Path(run_dir)
    metrics = run_dir / METRICS_FILE
    if not metrics.exists():
        raise Geo3dError(f"{run_dir} is not a training run: {METRICS_FILE} is missing; pass run directories "
                         "made by `geo3d train --out RUN_DIR`")
    compressor, preset = _recorded(run_dir, "model.compressor.type"), _recorded(run_dir, "preset")
    run = RunSummary(run_dir, f"{compressor} [{preset}] ({run_dir.name})", compressor, preset)
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
    run.success = _eval_results(run_dir)
    return run


def write_report(run_dirs: list[str | Path], out: Path) -> list[Path]:
    """report.png + report.md + report.json (the numbers behind both) in `out`."""
    from geo3d.evaluation.report_render import markdown_table, render_png

    if not run_dirs:
        raise Geo3dError("give at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    out.mkdir(parents=True, exist_ok=True)
    png = render_png(runs, out / "report.png")
    md = out / "report.md"
    md.write_text("# geo3d compressor ablation\n\n![report](report.png)\n\n" + markdown_table(runs))
    summary = [{"run_dir": str(r.run_dir), "compressor": r.compressor, "preset": r.preset,
                "last_step": r.steps[-1] if r.steps else None,
                "final_loss": r.tail_mean(r.loss), "compressor_grad_norm": r.tail_mean(r.grad_compressor),
                "geom_attention_mass": {i: r.tail_mean(v) for i, v in sorted(r.geom_attn.items())},
                "success": r.success} for r in runs]
    js = out / "report.json"
    js.write_text(json.dumps(summary, indent=2))
    return [png, md, js]
