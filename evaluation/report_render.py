"""Render loaded runs (evaluation/report.py) and their analysis (evaluation/report_compare.py) as one markdown
report and one PNG (matplotlib, Agg): training curves, success with 95% intervals as error bars, per-seed success,
paired differences with their intervals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt

from geo3d.core.errors import Geo3dError
from geo3d.core.provenance import provenance
from geo3d.evaluation.report import RunSummary, load_run
from geo3d.evaluation.report_compare import ALL, METHODS, analyse, power_line, verdict


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "—" if value is None else format(value, spec)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _interval(ci: list[float], signed: bool = False) -> str:
    if signed:
        return "[" + ", ".join(f"{100 * v:+.1f}".replace("-", "−") for v in ci) + "] pts"
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]%"


def runs_table(runs: list[RunSummary]) -> str:
    """One row per run: its label (compressor@tap), preset, seed, final loss, grad norm, attention, success."""
    suites = sorted({s for r in runs for s in r.evals})
    head = ["run", "compressor@tap", "preset", "seed", "steps", "final loss", "compressor grad norm",
            "geom attn mass (mean over layers)", *[f"{s} success" for s in suites]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        layer_means = [r.tail_mean(v) for v in r.geom_attn.values()]
        attn = sum(layer_means) / len(layer_means) if layer_means else None  # type: ignore[arg-type]
        cells = [r.run_dir.name, r.config_label, r.preset, str(r.seed), str(r.steps[-1]) if r.steps else "—",
                 _fmt(r.tail_mean(r.loss)), _fmt(r.tail_mean(r.grad_compressor)), _fmt(attn)]
        for s in suites:
            e = r.evals.get(s)
            cells.append("—" if e is None else f"{_pct(e.successes / e.episodes)} ({e.successes}/{e.episodes})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def success_table(rows: list[dict[str, Any]]) -> str:
    head = ["configuration", "suite", "seeds", "per-seed success", "mean ± sd across seeds", "pooled",
            "95% Wilson interval"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        per_seed = ", ".join(f"s{s}: {v['successes']}/{v['episodes']}" for s, v in r["per_seed"].items())
        sd = "" if r["seed_sd"] is None else f" ± {100 * r['seed_sd']:.1f}"
        lines.append(f"| {r['config']} | {r['suite']} | {len(r['seeds'])} | {per_seed} | {100 * r['seed_mean']:.1f}"
                     f"{sd}% | {r['successes']}/{r['episodes']} = {_pct(r['rate'])} | {_interval(r['ci'])} |")
    return "\n".join(lines) + "\n"


def comparison_table(rows: list[dict[str, Any]]) -> str:
    head = ["A − B", "suite", "seeds", "paired episodes", "only A / only B succeeded", "difference",
            "95% interval (Newcombe, paired)", "McNemar exact p", "pairs needed (80%)", "seeds needed (80%)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in rows:
        lines.append(f"| {c['a']} − {c['b']} | {c['suite']} | {len(c['seeds'])} | {c['pairs']} | "
                     f"{c['table']['b']} / {c['table']['c']} | {100 * c['difference']:+.1f} pts | "
                     f"{_interval(c['ci'], signed=True)} | {c['p_mcnemar']:.3g} | {_fmt(c['pairs_needed'], 'd')} | "
                     f"{_fmt(c['seeds_needed'], 'd')} |")
    return "\n".join(lines) + "\n"


def markdown_report(runs: list[RunSummary], analysis: dict[str, Any]) -> str:
    parts = ["# geo3d ablation report\n", "![report](report.png)\n", "## Verdicts\n"]
    comps = analysis["comparisons"]
    if comps:
        for c in comps:
            parts.append(f"- **{verdict(c)}** — {c['question']}  \n  {power_line(c)}")
    else:
        parts.append("No paired comparison: it needs a `none` run (or a `<compressor>@encoder` run beside its "
                     "`@info_sharing` run) of the same preset and seed, evaluated on the same episodes.")
    parts.append("")
    if analysis["refused"] or analysis["flags"]:
        parts.append("## Flags and refused comparisons\n")
        parts += [f"- refused: {c['a']} − {c['b']} on {c['suite']}: {c['refused']}" for c in analysis["refused"]]
        parts += [f"- {f}" for f in analysis["flags"]]
        parts.append("")
    if analysis["success"]:
        parts += ["## Success per configuration (95% Wilson interval; seeds pooled)\n", success_table(analysis["success"])]
    if comps:
        parts += ["## Paired comparisons (same training seed, same task and init state)\n", comparison_table(comps)]
    parts += ["## Runs\n", runs_table(runs),
              "final loss / grad norm / attention: mean over the last 10% of logged steps. Success: LIBERO simulator, "
              "the complete `geo3d eval` result of the latest step under each RUN_DIR/eval*/. A run's label is its "
              "compressor and the encoder tap of the store it trained on (`none` reads no geometry, so it has no "
              "tap).\n", "## Methods\n"]
    parts += [f"- {k.replace('_', ' ')}: {v}" for k, v in METHODS.items()]
    return "\n".join(parts) + "\n"


def _plot_curves(ax, runs: list[RunSummary], attr_x: str, attr_y: str, title: str, log: bool) -> None:
    for r in runs:
        xs, ys = getattr(r, attr_x), getattr(r, attr_y)
        if xs:
            ax.plot(xs, ys, label=r.label, lw=1.2)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step")
    if log and any(getattr(r, attr_y) for r in runs) and all(min(getattr(r, attr_y), default=1) > 0 for r in runs):
        ax.set_yscale("log")
    _legend_or_note(ax, any(getattr(r, attr_x) for r in runs))


def _legend_or_note(ax, has_data: bool, text: str = "no data in these runs") -> None:
    if has_data:
        ax.legend(fontsize=6)
    else:
        ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=8)


def _plot_attention(ax, runs: list[RunSummary]) -> None:
    for r in runs:
        if r.geom_attn:
            layers = sorted(r.geom_attn)
            ax.plot(layers, [r.tail_mean(r.geom_attn[i]) for i in layers], marker="o", label=r.label)
    ax.set_title("attention mass on geometry tokens (last 10% of steps)", fontsize=9)
    ax.set_xlabel("DiT layer")
    ax.xaxis.get_major_locator().set_params(integer=True)
    _legend_or_note(ax, any(r.geom_attn for r in runs))


def _plot_success(ax, rows: list[dict[str, Any]]) -> None:
    """Pooled success per configuration and suite, the 95% Wilson interval as error bars, per-seed rates as dots."""
    suites = sorted({r["suite"] for r in rows}, key=lambda s: (s == ALL, s))
    configs = list(dict.fromkeys(r["config"] for r in rows))
    width = 0.8 / max(1, len(configs))
    for j, cfg in enumerate(configs):
        mine = {r["suite"]: r for r in rows if r["config"] == cfg}
        xs = [i + j * width for i, s in enumerate(suites) if s in mine]
        rs = [mine[s] for s in suites if s in mine]
        ys = [100 * r["rate"] for r in rs]
        err = [[y - 100 * r["ci"][0] for y, r in zip(ys, rs)], [100 * r["ci"][1] - y for y, r in zip(ys, rs)]]
        bars = ax.bar(xs, ys, width=width, label=cfg, yerr=err, capsize=3, alpha=0.8)
        ax.bar_label(bars, [f"{r['successes']}/{r['episodes']}" for r in rs], fontsize=6, padding=2)
        for x, r in zip(xs, rs):
            ax.plot([x] * len(r["per_seed"]), [100 * v["rate"] for v in r["per_seed"].values()], "k.", ms=3)
    ax.set_xticks([i + (len(configs) - 1) * width / 2 for i in range(len(suites))], suites, fontsize=7)
    ax.set_ylim(0, 105)
    ax.set_title("success (%), 95% Wilson interval; dots: seeds", fontsize=9)
    _legend_or_note(ax, bool(rows), "no evaluation results")


def _plot_differences(ax, comps: list[dict[str, Any]]) -> None:
    """Forest plot: each paired difference with its 95% interval, per-seed differences as dots."""
    for i, c in enumerate(comps):
        y = len(comps) - 1 - i
        d, (lo, hi) = 100 * c["difference"], c["ci"]
        ax.errorbar([d], [y], xerr=[[d - 100 * lo], [100 * hi - d]], fmt="o", capsize=3,
                    color="tab:red" if c["significant"] else "tab:blue")
        ax.plot([100 * v for v in c["per_seed_difference"].values()], [y] * len(c["per_seed_difference"]), "k.", ms=3)
    ax.axvline(0, color="gray", lw=0.8)
    ax.set_yticks(range(len(comps)), [f"{c['a'].split(' [')[0]} − {c['b'].split(' [')[0]}\n{c['suite']} "
                                      f"(p={c['p_mcnemar']:.2g}, n={c['pairs']})" for c in reversed(comps)], fontsize=6)
    ax.set_xlabel("success difference (pts)")
    ax.set_title("paired differences, 95% Newcombe interval; dots: seeds", fontsize=9)
    if not comps:
        ax.text(0.5, 0.5, "no paired comparison", ha="center", va="center", transform=ax.transAxes, fontsize=8)


def render_png(runs: list[RunSummary], analysis: dict[str, Any], path: Path) -> Path:
    matplotlib.use("Agg")

    fig, axes = plt.subplots(2, 3, figsize=(18, 9))
    _plot_curves(axes[0, 0], runs, "steps", "loss", "training loss (flow matching)", log=True)
    _plot_curves(axes[0, 1], runs, "grad_steps", "grad_compressor", "gradient norm reaching the compressor", log=True)
    _plot_attention(axes[0, 2], runs)
    _plot_success(axes[1, 0], analysis["success"])
    _plot_differences(axes[1, 1], analysis["comparisons"])
    axes[1, 2].axis("off")
    notes = [verdict(c) for c in analysis["comparisons"]][:8] + [f"refused: {c['a']} − {c['b']} on {c['suite']}"
                                                                  for c in analysis["refused"]][:4]
    axes[1, 2].text(0, 1, "\n".join(notes) or "no paired comparison", va="top", fontsize=7, wrap=True)
    fig.suptitle("geo3d: compressor x encoder tap ablation")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _run_record(r: RunSummary) -> dict[str, Any]:
    return {"run_dir": str(r.run_dir), "label": r.config_label, "compressor": r.compressor, "tap": r.tap,
            "preset": r.preset, "seed": r.seed, "last_step": r.steps[-1] if r.steps else None,
            "final_loss": r.tail_mean(r.loss), "compressor_grad_norm": r.tail_mean(r.grad_compressor),
            "geom_attention_mass": {i: r.tail_mean(v) for i, v in sorted(r.geom_attn.items())},
            "success": r.success,
            "eval_settings": {s: e.settings for s, e in r.evals.items()}}


def write_report(run_dirs: list[str | Path], out: Path) -> list[Path]:
    """report.png + report.md + report.json (the numbers behind both) in `out`."""
    if not run_dirs:
        raise Geo3dError("give at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    dirs = [r.run_dir.resolve() for r in runs]
    if len(set(dirs)) != len(dirs):
        raise Geo3dError("a run directory is given twice: each run counts once (seeds are separate runs)")
    analysis = analyse(runs)
    out.mkdir(parents=True, exist_ok=True)
    png = render_png(runs, analysis, out / "report.png")
    md = out / "report.md"
    md.write_text(markdown_report(runs, analysis))
    js = out / "report.json"
    js.write_text(json.dumps({"runs": [_run_record(r) for r in runs], **analysis, "provenance": provenance()},
                             indent=2, default=str))
    return [png, md, js]
