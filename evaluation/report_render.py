"""Render loaded runs (evaluation/report.py) as one PNG (matplotlib, Agg) and one markdown table."""

from __future__ import annotations

from pathlib import Path

from evaluation.report import RunSummary


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "—" if value is None else format(value, spec)


def markdown_table(runs: list[RunSummary]) -> str:
    """One row per run: final loss, compressor grad norm, geometry attention mass, success per suite."""
    suites = sorted({s for r in runs for s in r.success})
    head = ["run", "compressor", "preset", "steps", "final loss", "compressor grad norm",
            "geom attn mass (mean over layers)",
            *[f"{s} success" for s in suites]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        layer_means = [r.tail_mean(v) for v in r.geom_attn.values()]
        attn = sum(layer_means) / len(layer_means) if layer_means else None
        cells = [r.run_dir.name, r.compressor, r.preset, str(r.steps[-1]) if r.steps else "—",
                 _fmt(r.tail_mean(r.loss)), _fmt(r.tail_mean(r.grad_compressor)), _fmt(attn)]
        for s in suites:
            e = r.success.get(s)
            cells.append("—" if e is None else f"{100 * e['success_rate']:.1f}% ({e['successes']}/{e['episodes']})")
        lines.append("| " + " | ".join(cells) + " |")
    note = ("\nfinal loss / grad norm / attention: mean over the last 10% of logged steps. "
            "Success: LIBERO simulator, `geo3d eval` results found under each RUN_DIR/eval*/.\n")
    return "\n".join(lines) + "\n" + note


def _plot_curves(ax, runs: list[RunSummary], attr_x: str, attr_y: str, title: str, log: bool) -> None:
    for r in runs:
        xs, ys = getattr(r, attr_x), getattr(r, attr_y)
        if xs:
            ax.plot(xs, ys, label=r.label, lw=1.2)
    ax.set_title(title)
    ax.set_xlabel("step")
    if log and any(getattr(r, attr_y) for r in runs) and all(min(getattr(r, attr_y), default=1) > 0 for r in runs):
        ax.set_yscale("log")
    _legend_or_note(ax, any(getattr(r, attr_x) for r in runs))


def _legend_or_note(ax, has_data: bool) -> None:
    if has_data:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no data in these runs", ha="center", va="center", transform=ax.transAxes)


def _plot_attention(ax, runs: list[RunSummary]) -> None:
    for r in runs:
        if r.geom_attn:
            layers = sorted(r.geom_attn)
            ax.plot(layers, [r.tail_mean(r.geom_attn[i]) for i in layers], marker="o", label=r.label)
    ax.set_title("attention mass on geometry tokens (last 10% of steps)")
    ax.set_xlabel("DiT layer")
    ax.xaxis.get_major_locator().set_params(integer=True)
    _legend_or_note(ax, any(r.geom_attn for r in runs))


def _plot_success(ax, runs: list[RunSummary]) -> None:
    """Grouped bars per suite, each labelled with its rate and counts (a 0% bar stays readable)."""
    suites = sorted({s for r in runs for s in r.success})
    width = 0.8 / max(1, len(runs))
    for j, r in enumerate(runs):
        xs = [i + j * width for i, s in enumerate(suites) if s in r.success]
        evals = [r.success[s] for s in suites if s in r.success]
        if xs:
            bars = ax.bar(xs, [100 * e["success_rate"] for e in evals], width=width, label=r.label)
            ax.bar_label(bars, [f"{100 * e['success_rate']:.0f}% ({e['successes']}/{e['episodes']})" for e in evals],
                         fontsize=7)
    ax.set_xticks([i + (len(runs) - 1) * width / 2 for i in range(len(suites))], suites, fontsize=8)
    ax.set_xlim(-0.5, max(1, len(suites)) - 0.3)
    ax.set_ylim(0, 105)
    ax.set_title("LIBERO success rate (%)")
    _legend_or_note(ax, bool(suites))


def render_png(runs: list[RunSummary], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    _plot_curves(axes[0, 0], runs, "steps", "loss", "training loss (flow matching)", log=True)
    _plot_curves(axes[0, 1], runs, "grad_steps", "grad_compressor", "gradient norm reaching the compressor", log=True)
    _plot_attention(axes[1, 0], runs)
    _plot_success(axes[1, 1], runs)
    fig.suptitle("geo3d: geometry compressor ablation")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
