"""Eval at scale: one `geo3d serve` feeding 1 and N simulator workers (`geo3d eval --server --workers N`), on this
machine, and what a full LIBERO evaluation costs per checkpoint at the measured rates.

Measured (side by side in one run, same checkpoint, same episodes): wall time, episodes/min, env steps/s, policy
queries/s, and the server's batching (forwards, mean batch) for each worker count. Computed (labelled so): the
hours of a full evaluation -- 4 suites x 500 episodes -- if every episode ran to its suite's step cap (the upper
bound; successful episodes stop earlier), at the measured env steps/s. Needs the simulator (`make sim`).

    python scripts/bench_serve.py --ckpt runs/demo/train_qformer_<time> [--workers 1 2] [--tasks 0,1]
        [--episodes-per-task 2] [--max-steps 40] [--out runs/bench_serve]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geo3d.core.provenance import provenance  # noqa: E402
from geo3d.evaluation.client import RemotePolicy  # noqa: E402
from geo3d.evaluation.episode import MAX_STEPS  # noqa: E402

FULL_EPISODES_PER_SUITE, SETTLE_STEPS = 500, 10  # 10 tasks x 50 init states; eval.settle_steps
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def geo3d(*args: str) -> list[str]:
    return [sys.executable, "-m", "geo3d.cli", *args]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


class Server:
    """`geo3d serve` in a subprocess; the URL comes from its 'serving ... on ws://' line."""

    def __init__(self, ckpt: str, overrides: list[str]) -> None:
        self.proc = subprocess.Popen(geo3d("serve", "--ckpt", ckpt, "--port", "0", *overrides), env=ENV,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = re.search(r"on (ws://\S+)", line)
            if m:
                self.url = m.group(1)
                return
        raise SystemExit(f"geo3d serve did not start (exit {self.proc.wait()})")

    def batching(self) -> dict:
        client = RemotePolicy(self.url, connect_timeout=30)
        try:
            return client.health()["batching"]
        finally:
            client.close()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def run_eval(url: str, workers: int, a: argparse.Namespace, out: Path) -> dict:
    load_before = os.getloadavg()[0]  # the machine may be shared: its load is part of the measurement
    before = time.perf_counter()
    cmd = geo3d("eval", "--server", url, "--suite", a.suite, "--tasks", a.tasks, "--episodes-per-task",
                str(a.episodes_per_task), "--max-steps", str(a.max_steps), "--workers", str(workers), "--out", str(out),
                "--overwrite", "eval.gl=osmesa")
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - before
    if proc.returncode != 0:
        raise SystemExit(f"geo3d eval failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    res = json.loads((out / "results.json").read_text())
    eps = res["episodes"]
    steps = sum(e["steps"] for e in eps) + SETTLE_STEPS * len(eps)
    return {"workers": workers, "episodes": len(eps), "wall_s": round(wall, 1), "eval_s": res["seconds"],
            "episodes_per_min": round(len(eps) / wall * 60, 2), "env_steps": steps,
            "env_steps_per_s": round(steps / res["seconds"], 2),
            "queries_per_s": round(sum(e["queries"] for e in eps) / res["seconds"], 2),
            "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def full_eval_hours(steps_per_s: float) -> float:
    """Computed: 4 suites x 500 episodes, each to its step cap plus the settle steps (upper bound)."""
    steps = sum(FULL_EPISODES_PER_SUITE * (cap + SETTLE_STEPS) for cap in MAX_STEPS.values())
    return steps / steps_per_s / 3600


def markdown(r: dict) -> str:
    rows = ["| workers | episodes | wall s | episodes/min (measured) | env steps/s (measured) | queries/s | "
            "server forwards | mean batch | load avg before/after | full LIBERO eval, h (computed, upper bound) |",
            "|" + "---|" * 10]
    for m in r["runs"]:
        b = m["batching"]
        rows.append(f"| {m['workers']} | {m['episodes']} | {m['wall_s']} | {m['episodes_per_min']} | "
                    f"{m['env_steps_per_s']} | {m['queries_per_s']} | {b['forwards']} | {b['mean_batch']} | "
                    f"{m['load_avg_1min'][0]} / {m['load_avg_1min'][1]} | {m['full_eval_hours_computed']:.1f} |")
    head = (f"bench_serve on {r['machine']['cpu']} ({r['machine']['cores']} cores), checkpoint {r['checkpoint']}, "
            f"{r['suite']} tasks {r['tasks']} x {r['episodes_per_task']} episodes, --max-steps {r['max_steps']}; "
            f"full eval = 4 suites x {FULL_EPISODES_PER_SUITE} episodes, every episode to its cap "
            f"({r['full_eval_env_steps']} env steps incl. settle)")
    return head + "\n\n" + "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="checkpoint or run dir (e.g. a `geo3d demo` run)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--suite", default="libero_spatial")
    p.add_argument("--tasks", default="0,1")
    p.add_argument("--episodes-per-task", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--out", type=Path, default=Path("runs/bench_serve"))
    p.add_argument("serve_overrides", nargs="*", help="key=value for geo3d serve (e.g. serve.batch.wait_ms=10)")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    server = Server(a.ckpt, a.serve_overrides)
    runs = []
    try:
        for n in a.workers:
            before = server.batching()
            m = run_eval(server.url, n, a, a.out / f"eval_workers{n}")
            after = server.batching()
            forwards = after["forwards"] - before["forwards"]
            queries = after["batched_queries"] - before["batched_queries"]
            m["batching"] = {"forwards": forwards, "mean_batch": round(queries / forwards, 2) if forwards else None}
            m["full_eval_hours_computed"] = round(full_eval_hours(m["env_steps_per_s"]), 2)
            runs.append(m)
            print(json.dumps(m), flush=True)
    finally:
        server.stop()
    report = {"checkpoint": a.ckpt, "suite": a.suite, "tasks": a.tasks, "episodes_per_task": a.episodes_per_task,
              "max_steps": a.max_steps, "serve_overrides": a.serve_overrides, "runs": runs,
              "full_eval_env_steps": sum(FULL_EPISODES_PER_SUITE * (c + SETTLE_STEPS) for c in MAX_STEPS.values()),
              "machine": {"cpu": cpu_name(), "cores": os.cpu_count()}, "gpu_latency": "not measured (no device)",
              "provenance": provenance()}
    (a.out / "bench_serve.json").write_text(json.dumps(report, indent=2) + "\n")
    (a.out / "bench_serve.md").write_text(markdown(report) + "\n")
    print(markdown(report))


if __name__ == "__main__":
    main()
