"""`geo3d demo --eval`: close the loop after the demo's training run.

The trained policy is evaluated in the LIBERO simulator from its own training scenes (the demo data's tasks,
bundled init states and scene seed, read from demo_data/generation.json), then `geo3d report` draws the loss
curves and the success table into RUN_DIR/report/report.png. Each step is a `geo3d` subprocess, as in the demo.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from geo3d.core.errors import Geo3dError

# Training settings of the closed-loop demo (configs/train/demo_eval.yaml), merged after configs/train/demo.yaml.
TRAIN_CONFIG = "train/demo_eval"


def eval_plan(data_root: Path) -> list[dict]:
    """Per suite of the demo data: its task ids, how many bundled init states (0..n-1) and the scene seed."""
    gen = data_root / "generation.json"
    if not gen.is_file():
        raise Geo3dError(f"{gen} is missing: `geo3d demo --eval` evaluates on the demo data's own tasks and init "
                         "states, which it lists; restore demo_data/ from git (git checkout -- demo_data)")
    meta = json.loads(gen.read_text())
    init_ids = [int(i) for i in meta["init_state_ids"]]
    if init_ids != list(range(len(init_ids))):
        raise Geo3dError(f"{gen}: init states {init_ids} are not 0..n-1, which `geo3d eval` cannot select")
    return [{"suite": suite, "tasks": ",".join(str(t) for t in tasks), "episodes": len(init_ids),
             "seed": int(meta["seed"])} for suite, tasks in meta["plan"].items()]


def closed_loop(run_step: Callable[[str, list[str], Path], float], data_root: Path, run_dir: Path,
                logs: Path) -> dict[str, float]:
    """Evaluate RUN_DIR's latest checkpoint on every demo suite (videos on), then `geo3d report RUN_DIR`."""
    timings = {}
    for p in eval_plan(data_root):
        args = ["eval", "--ckpt", str(run_dir), "--suite", p["suite"], "--tasks", p["tasks"],
                "--episodes-per-task", str(p["episodes"]), "--video", f"eval.seed={p['seed']}", "eval.device=cpu"]
        timings[f"eval_{p['suite']}"] = run_step(f"eval_{p['suite']}", args, logs)
    timings["report"] = run_step("report", ["report", str(run_dir), "--out", str(run_dir / "report")], logs)
    return timings
