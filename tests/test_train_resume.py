"""Kill a real training subprocess mid-run (SIGKILL, and SIGTERM as a cluster preemption), then --resume:
the losses must equal the uninterrupted run's step by step, exactly (CPU, one thread)."""

from __future__ import annotations

import json
import signal
import time

import pytest

from geo3d.core.preemption import PREEMPTED_EXIT_CODE
from geo3d.policy.run_dir import METRICS_FILE, read_metrics
from geo3d.policy.weights_io import load_weights

from helpers import popen_geo3d, spawn_geo3d
from train_fixtures import make_train_data, train_args

pytestmark = pytest.mark.slow  # kills and resumes real training subprocesses


STEPS = 30
SAVE_EVERY = 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    data, store = make_train_data(root)
    ref = root / "uninterrupted"
    r = spawn_geo3d(_args(data, store, ref), expect=None)
    assert r.returncode == 0, r.stderr[-3000:]
    return data, store, [rec["loss"] for rec in read_metrics(ref)], ref


def _args(data, store, out):  # with EMA on, so its state is saved and restored too
    return train_args(data, store, out, "qformer", STEPS, f"train.save_interval={SAVE_EVERY}", "train.ema.enabled=true",
                      "train.ema.decay=0.9")


def _final_weights(out):
    return load_weights(out / "checkpoints" / f"steps_{STEPS}")


def _assert_same_final_weights(a, b):
    wa, wb = _final_weights(a), _final_weights(b)
    assert wa.keys() == wb.keys() and all(bool((wa[k] == wb[k]).all()) for k in wa)


def _start_and_signal_at(args, out, step, sig):
    """Start `geo3d train`, wait until metrics.jsonl has `step`, send `sig`; returns the exit code."""
    proc = popen_geo3d(args)
    deadline = time.monotonic() + 300
    path = out / METRICS_FILE
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and any(json.loads(line)["step"] >= step for line in path.read_text().splitlines()
                                 if line.strip()):
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def test_sigkill_then_resume_reproduces_losses_exactly(setup, tmp_path):
    data, store, reference, ref_dir = setup
    out = tmp_path / "run"
    code, err = _start_and_signal_at(_args(data, store, out), out, 15, signal.SIGKILL)
    assert code == -signal.SIGKILL, err[-2000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith(".")) == ["steps_10"]
    r = spawn_geo3d(_args(data, store, out) + ["--resume"], expect=None)
    assert r.returncode == 0, r.stderr[-3000:]
    records = read_metrics(out)
    assert [rec["step"] for rec in records] == list(range(1, STEPS + 1))  # steps 11..15 re-run, not duplicated
    assert [rec["loss"] for rec in records] == reference
    _assert_same_final_weights(out, ref_dir)  # EMA weights (the inference checkpoint) identical bit for bit


def test_sigterm_saves_exits_75_and_resume_reproduces_losses_exactly(setup, tmp_path):
    data, store, reference, ref_dir = setup
    out = tmp_path / "run"
    code, err = _start_and_signal_at(_args(data, store, out), out, 4, signal.SIGTERM)
    assert code == PREEMPTED_EXIT_CODE, err[-2000:]
    assert "preempted by SIGTERM" in err
    saved = [p.name for p in (out / "checkpoints").iterdir()]
    stopped_at = max(int(n.split("_")[1]) for n in saved)
    assert 4 <= stopped_at < STEPS and f"steps_{stopped_at}" in saved
    assert len(read_metrics(out)) == stopped_at
    r = spawn_geo3d(_args(data, store, out) + ["--resume"], expect=None)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [rec["loss"] for rec in read_metrics(out)] == reference
    _assert_same_final_weights(out, ref_dir)


def test_resume_refuses_a_changed_config_and_a_fresh_start_refuses_an_existing_run(setup, tmp_path):
    data, store, _, _ = setup
    out = tmp_path / "run"
    assert spawn_geo3d(train_args(data, store, out, "qformer", 2, "train.save_interval=1"), expect=None).returncode == 0
    r = spawn_geo3d(train_args(data, store, out, "qformer", 4, "train.save_interval=1", "train.lr.vlm=0.1",
                             "--resume"), expect=None)
    assert r.returncode == 2 and "train.lr.vlm" in r.stderr and "Traceback" not in r.stderr
    r = spawn_geo3d(train_args(data, store, out, "qformer", 4), expect=None)
    assert r.returncode == 2 and "already holds a run" in r.stderr
    r = spawn_geo3d(train_args(data, store, out, "qformer", 4, "--resume"), expect=None)  # extending max_steps is allowed
    assert r.returncode == 0, r.stderr[-2000:]
    assert [rec["step"] for rec in read_metrics(out)] == [1, 2, 3, 4]
