"""`geo3d train` as real processes where signals and concurrency matter (issue 25 rows 1 and 8): two trains
started together on one --out (one is refused at once, the other's run is untouched), and Ctrl-C (checkpoint,
exit 130, say how to resume; a second Ctrl-C stops at once). On a copy of the demo data, tiny model."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from demo_copies import copy_demo
from geo3d.core.config import PACKAGE_ROOT
from geo3d.core.preemption import INTERRUPTED_EXIT_CODE
from geo3d.policy.run_dir import list_checkpoints
from geo3d.train.run_guard import RUN_MARKER
from helpers import geo3d_cmd, subprocess_env

pytestmark = pytest.mark.slow  # real geo3d train subprocesses

STEPS = 40  # the signal must land mid-run: with 12 (~3.5 s) a loaded CI machine once delivered the Ctrl-C sent at
            # step 3 after the last step, and the run rightly ended 0 (2026-12-04)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return copy_demo(tmp_path_factory.mktemp("demo") / "data")


def start(root: Path, out: Path, *extra: str) -> subprocess.Popen:
    args = ["train", "--suite", "demo", "--config", "train/demo", "--data-root", str(root), "--compressor", "none",
            "--out", str(out), "--max-steps", str(STEPS), *extra]
    return subprocess.Popen(geo3d_cmd(*args), cwd=PACKAGE_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=subprocess_env())


def steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_step(proc: subprocess.Popen, out: Path, step: int) -> None:
    deadline = time.monotonic() + 300
    while len(steps(out)) < step and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None and len(steps(out)) >= step, "train ended before the signal: raise STEPS"


def test_row1_two_trains_started_together_one_is_refused_at_once(root, tmp_path):
    out = tmp_path / "run"
    procs = [start(root, out), start(root, out)]
    ended: dict[int, float] = {}
    deadline = time.monotonic() + 600
    while len(ended) < 2 and time.monotonic() < deadline:  # poll both: when each one ended
        for p in procs:
            if p.pid not in ended and p.poll() is not None:
                ended[p.pid] = time.monotonic()
        time.sleep(0.05)
    results = {p.pid: (p.returncode, p.communicate(timeout=60)[1], ended[p.pid]) for p in procs}
    codes = sorted(code for code, _, _ in results.values())
    assert codes == [0, 2], {pid: (c, e[-1500:]) for pid, (c, e, _) in results.items()}
    winner = next(pid for pid, (code, _, _) in results.items() if code == 0)
    loser_err, loser_end = next((err, t) for code, err, t in results.values() if code == 2)
    assert loser_end < results[winner][2]  # refused while the winner was still training
    assert f"run directory {out} is in use by another `geo3d train` (pid {winner} on" in loser_err, loser_err
    assert "Traceback" not in loser_err
    assert steps(out) == list(range(1, STEPS + 1))  # one run's steps, once each (not 1,1,2,2,...)
    assert [s for s, _ in list_checkpoints(out)] == [STEPS]
    assert json.loads((out / RUN_MARKER).read_text())["owner"]["pid"] == winner
    assert len(json.loads((out / "provenance.json").read_text())) == 1  # one launch recorded


def test_row8_ctrl_c_checkpoints_says_how_to_resume_and_exits_130(root, tmp_path):
    out = tmp_path / "run"
    proc = start(root, out)
    wait_for_step(proc, out, 3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == INTERRUPTED_EXIT_CODE, err[-2000:]
    saved = [s for s, _ in list_checkpoints(out)]
    assert len(saved) == 1 and 3 <= saved[0] < STEPS, (saved, err[-2000:])
    assert f"interrupted by Ctrl-C (SIGINT) at step {saved[0]}; saved {out}/checkpoints/steps_{saved[0]}; re-run " \
           f"the same command with --resume to continue (exit 130)" in err, err[-2000:]
    assert "Traceback" not in err
    resumed = start(root, out, "--resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    assert steps(out) == list(range(1, STEPS + 1))  # nothing since the Ctrl-C was lost or repeated


def test_row8_a_second_ctrl_c_stops_at_once(root, tmp_path):
    out = tmp_path / "run"
    proc = start(root, out)
    wait_for_step(proc, out, 2)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == INTERRUPTED_EXIT_CODE, err[-2000:]
    assert "Ctrl-C again to stop at once" in err and "error: interrupted (Ctrl-C): stopped at once" in err, err[-2000:]
    assert "Traceback" not in err
