"""Evaluation results: per-task and per-suite success as JSON (results.json) and a markdown table."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def summarize(episodes: list[dict[str, Any]], tasks: list[Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(per-task rows in task order, suite summary) from episode records."""
    rows = []
    for t in tasks:
        eps = [e for e in episodes if e["task_id"] == t.task_id]
        n, k = len(eps), sum(bool(e["success"]) for e in eps)
        rows.append({"task_id": t.task_id, "name": t.name, "instruction": t.language, "episodes": n,
                     "successes": k, "success_rate": k / n if n else None,
                     "mean_steps": sum(e["steps"] for e in eps) / n if n else None,
                     "sim_errors": sum(e.get("error") is not None for e in eps)})
    n = sum(r["episodes"] for r in rows)
    k = sum(r["successes"] for r in rows)
    return rows, {"episodes": n, "successes": k, "success_rate": k / n if n else None, "tasks": len(rows)}


def markdown(results: dict[str, Any]) -> str:
    s = results["summary"]
    rate = "—" if s["success_rate"] is None else f"{100 * s['success_rate']:.1f}%"
    lines = [f"# {results['suite']}: {rate} ({s['successes']}/{s['episodes']})", "",
             f"checkpoint: `{results.get('checkpoint')}`  ", f"settings: `{json.dumps(results['settings'])}`", "",
             "| task | instruction | success | rate | mean steps | sim errors |", "|---|---|---|---|---|---|"]
    for r in results["tasks"]:
        rr = "—" if r["success_rate"] is None else f"{100 * r['success_rate']:.1f}%"
        ms = "—" if r["mean_steps"] is None else f"{r['mean_steps']:.0f}"
        lines.append(f"| {r['task_id']} | {r['instruction']} | {r['successes']}/{r['episodes']} | {rr} | {ms} | "
                     f"{r['sim_errors']} |")
    lines.append(f"| **all** | | **{s['successes']}/{s['episodes']}** | **{rate}** | | |")
    return "\n".join(lines) + "\n"


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)
