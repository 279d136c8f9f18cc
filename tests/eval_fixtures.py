"""Shared by the tests/test_eval_*.py files: real tiny training runs to evaluate, serve and report on.

Built once per pytest session under the session's base temp dir: the shipped demo dataset (demo_data/,
rendered by the LIBERO simulator; a small synthetic one if it is absent), a features store made by the real
`geo3d precompute --encoder tiny` (so evaluation can rebuild the encoder for live frames), and two
`geo3d train` runs (qformer, pool) of 2 steps.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from geo3d.core.cliutil import build_config
from geo3d.core.config import PACKAGE_ROOT
from geo3d.data.suites import DEMO_DATA_ROOT
from geo3d.evaluation.cli import DEFAULTS, config_schema
from geo3d.evaluation.server import ServeSettings

from helpers import Result, geo3d_cmd, spawn_geo3d, subprocess_env

# Every module that uses trained_runs() carries this mark: under `make test`'s two pytest-xdist workers they run
# on one worker, so the runs below are trained once per session (tmp_path_factory's base dir is per worker).
SHARED_RUNS = pytest.mark.xdist_group("eval_runs")

IMAGE, TOKENS = 56, 16          # small images (multiple of 14 for the encoder) and a 4x4 token grid
COMPRESSORS = ("qformer", "pool")
PRESETS = {"qformer": "geo3d", "pool": "fork"}  # the pool run uses the fork's design (configs/preset/fork.yaml)
ENV = subprocess_env()
geo3d = geo3d_cmd


def run(args: list[str], timeout: float = 300) -> Result:
    return spawn_geo3d(args, timeout=timeout)


def serve_settings(*overrides: str):
    """ServeSettings from configs/eval.yaml (the one source of the serve defaults) plus key=value overrides."""
    return ServeSettings.from_cfg(build_config(DEFAULTS, None, list(overrides), schema=config_schema()))


def start_server(srv) -> tuple[str, Callable[[], None]]:
    """Run a PolicyServer on its event loop in a daemon thread: (ws:// URL, stop())."""
    ready, loop, holder = threading.Event(), asyncio.new_event_loop(), {}

    async def main():
        holder["task"] = asyncio.current_task()
        try:
            await srv.run(on_ready=lambda url: (holder.update(url=url), ready.set()))
        except asyncio.CancelledError:
            pass

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    assert ready.wait(20), "server did not start"

    def stop() -> None:
        if thread.is_alive():
            loop.call_soon_threadsafe(holder["task"].cancel)
            thread.join(10)

    return holder["url"], stop


@functools.lru_cache(maxsize=None)
def sim_available() -> str | None:
    """None when the LIBERO simulator imports here, else the reason it does not."""
    code = ("from geo3d.core import sim; sim.configure('osmesa'); from libero.libero import benchmark; "
            "import mujoco; print(mujoco.__version__)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE_ROOT, capture_output=True, text=True,
                          timeout=120, env=ENV, stdin=subprocess.DEVNULL)
    return None if proc.returncode == 0 else f"LIBERO simulator not importable: {proc.stderr.strip()[-300:]}"


def trained_runs(base: Path) -> dict[str, Path]:
    """compressor -> run dir with metrics.jsonl, resolved_config.yaml and checkpoints/steps_2/."""
    ready = base / "runs.json"
    if ready.exists():
        return {k: Path(v) for k, v in json.loads(ready.read_text()).items()}

    if any(DEMO_DATA_ROOT.glob("libero_spatial*")):
        data = ["--suite", "demo"]
    else:
        from data_fixtures import make_synthetic_libero

        make_synthetic_libero(base / "data", suites=("libero_spatial",), episodes_per_suite=2, length=12, size=64)
        data = ["--suite", "libero_spatial", "--data-root", str(base / "data")]
    run(["precompute", *data, "--encoder", "tiny", "--store", str(base / "store"), f"data.image_size={IMAGE}",
         f"encoder.tokens_per_view={TOKENS}"])
    procs = {}
    for comp in COMPRESSORS:  # both runs at once: 2 cores here
        args = ["train", "--compressor", comp, *data, "--store", str(base / "store"), "--config", "train/demo",
                "--out", str(base / f"run_{comp}"), "--max-steps", "2", "train.save_interval=2", f"model.geometry.tokens_per_view={TOKENS}",
                "model.geometry.dim=128", f"data.image_size={IMAGE}", f"preset={PRESETS[comp]}"]
        procs[comp] = subprocess.Popen(geo3d(*args), cwd=PACKAGE_ROOT, env=ENV, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    for comp, p in procs.items():
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, f"train {comp} failed:\n{err[-3000:]}"
    runs = {c: base / f"run_{c}" for c in COMPRESSORS}
    ready.write_text(json.dumps({k: str(v) for k, v in runs.items()}))
    return runs


def evaluated_run(base: Path) -> tuple[Path, dict]:
    """The qformer run after one real LIBERO episode (task 0, 10 steps, in-process policy, with video)."""
    run_dir = trained_runs(base)["qformer"]
    results = run_dir / "eval_libero_spatial_step2" / "results.json"
    if not results.exists():
        run(["eval", "--ckpt", str(run_dir), "--suite", "libero_spatial", "--tasks", "0", "--episodes-per-task",
             "1", "--max-steps", "10", "--video"], timeout=600)
    return run_dir, json.loads(results.read_text())


class ServeProcess:
    """`geo3d serve` in a subprocess on a free port; the URL comes from its 'serving ... on ws://' line."""

    def __init__(self, ckpt: Path, timeout: float = 180, env: dict | None = None):
        self.proc = subprocess.Popen(geo3d("serve", "--ckpt", str(ckpt), "--host", "127.0.0.1", "--port", "0"),
                                     cwd=PACKAGE_ROOT, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        deadline, lines = time.monotonic() + timeout, []
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                break
            lines.append(line)
            m = re.search(r"on (ws://\S+)", line)
            if m:
                self.url = m.group(1)
                self.output = lines  # keep draining, so a chatty server never blocks on a full pipe
                threading.Thread(target=lambda: lines.extend(self.proc.stdout), daemon=True).start()
                return
        self.stop()
        raise AssertionError("geo3d serve did not start:\n" + "".join(lines)[-3000:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
