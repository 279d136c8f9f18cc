"""Full disk and quota while `geo3d train` writes checkpoints and metrics: one message + exit 74, the cut
checkpoint is never taken for complete, and `--resume` after freeing space ends with the uninterrupted run's
weights and losses (exactly, on CPU)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from geo3d.core.storage_faults import STORAGE_FAULT_EXIT_CODE
from geo3d.features_store.store_size import du_bytes
from geo3d.policy.run_dir import list_checkpoints, read_metrics
from geo3d.policy.weights_io import load_weights

from storage_fixtures import geo3d, small_fs
from train_fixtures import make_train_data, train_args

STEPS, SAVE_EVERY = 6, 2  # three checkpoints; the small filesystem holds two and a half


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_faults")
    data, store = make_train_data(root)
    ref = root / "uninterrupted"
    r = geo3d(_args(data, store, ref))
    assert r.returncode == 0, r.stderr[-3000:]
    return data, store, ref


def _args(data: Path, store: Path, out: Path, *extra: str) -> list[str]:
    return train_args(data, store, out, "qformer", STEPS, f"train.save_interval={SAVE_EVERY}", *extra)


def _assert_same_run(a: Path, b: Path) -> None:
    wa, wb = (load_weights(d / "checkpoints" / f"steps_{STEPS}") for d in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r["loss"] for r in read_metrics(a)] == [r["loss"] for r in read_metrics(b)]


def _assert_message(err: str, what: str, out: Path) -> None:
    assert "Traceback" not in err, err[-3000:]
    for part in (f"train: storage fault: {what}", f"where: {out}", "for the next checkpoint", "already safe:",
                 "resume with: geo3d train", "--resume"):
        assert part in err, (part, err[-3000:])


@pytest.mark.slow  # an end-to-end subprocess run: `make test`, not the fast tier
def test_full_disk_mid_checkpoint_then_resume_is_identical(setup, tmp_path):
    data, store, ref = setup
    one = du_bytes(ref / "checkpoints" / f"steps_{STEPS}")  # one tiny-policy checkpoint (~24 MB)
    with small_fs(tmp_path, f"{int(2.5 * one) >> 10}k") as fs:
        if fs is None:
            pytest.skip("cannot mount a tmpfs here (needs root); test_quota_during_checkpoint covers the path")
        out = fs.path / "run"
        r = geo3d(_args(data, store, out))
        assert r.returncode == STORAGE_FAULT_EXIT_CODE, r.stderr[-3000:]
        _assert_message(r.stderr, "the filesystem is full (ENOSPC)", out)
        done = [s for s, _ in list_checkpoints(out)]
        assert done and done[-1] < STEPS, done
        assert f"the last complete checkpoint {out}/checkpoints/steps_{done[-1]}" in r.stderr
        assert "(the size of" in r.stderr  # measured from the last complete checkpoint
        assert not list((out / "checkpoints").glob(".*.partial"))  # the cut save was removed
        fs.resize(f"{8 * one >> 10}k")
        r = geo3d(_args(data, store, out, "--resume"))
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"from step {done[-1]}" in r.stdout + r.stderr
        _assert_same_run(out, ref)


@pytest.mark.slow  # an end-to-end subprocess run: `make test`, not the fast tier
def test_quota_during_first_checkpoint_then_resume_is_identical(setup, tmp_path):
    """EDQUOT injected into torch.save (no quota-enabled filesystem here): no checkpoint yet, so the message
    estimates the checkpoint from the parameter counts; the rerun starts over and matches."""
    data, store, ref = setup
    out = tmp_path / "run"
    r = geo3d(_args(data, store, out), inject=("EDQUOT", "torch", 2))
    assert r.returncode == STORAGE_FAULT_EXIT_CODE, r.stderr[-3000:]
    _assert_message(r.stderr, "your disk quota is exhausted (EDQUOT)", out)
    assert "estimated from the parameter counts" in r.stderr and "no complete checkpoint yet" in r.stderr
    assert list_checkpoints(out) == [] and not list((out / "checkpoints").glob(".*.partial"))
    r = geo3d(_args(data, store, out, "--resume"))
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_run(out, ref)


@pytest.mark.slow  # an end-to-end subprocess run: `make test`, not the fast tier
def test_kill9_mid_checkpoint_then_resume_is_identical(setup, tmp_path):
    """SIGKILL while torch.save is writing the step-6 checkpoint (a writer blocked inside the save): the cut
    `.steps_6.partial` is never loaded, resume starts from step 4 and ends identical."""
    from helpers import subprocess_env
    from storage_fixtures import INJECT, REPO
    data, store, ref = setup
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, INJECT, "HANG", "torch", ".steps_6.partial", "--",
                             *_args(data, store, out)], cwd=REPO, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env())
    for line in proc.stderr:
        if "fault-inject: hanging" in line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert [s for s, _ in list_checkpoints(out)] == [2, 4]
    assert list((out / "checkpoints").glob(".steps_6.partial"))  # the cut save is there, and ignored
    r = geo3d(_args(data, store, out, "--resume"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert not list((out / "checkpoints").glob(".*.partial"))
    _assert_same_run(out, ref)


@pytest.mark.slow  # an end-to-end subprocess run: `make test`, not the fast tier
def test_read_only_store_serves_training(setup, tmp_path):
    """The store on a read-only bind mount: verify-cache is clean and training reads it (nothing writes there)."""
    data, store, _ = setup
    ro = tmp_path / "ro_store"
    ro.mkdir()
    if subprocess.run(["mount", "--bind", str(store), str(ro)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here (needs root)")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True, capture_output=True)
        assert subprocess.run(["touch", str(ro / "x")], capture_output=True).returncode != 0  # really read-only
        v = geo3d(["verify-cache", str(ro), "--data-root", str(data)])
        assert v.returncode == 0, v.stdout[-2000:] + v.stderr[-2000:]
        r = geo3d(train_args(data, ro, tmp_path / "run", "qformer", 2, "train.save_interval=2"))
        assert r.returncode == 0, r.stderr[-3000:]
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)


@pytest.mark.slow  # trains a real run first, then a real `geo3d eval` process
def test_eval_results_onto_read_only_filesystem_is_a_storage_fault(setup, tmp_path):
    """`geo3d eval` writing its results dir on a read-only filesystem: exit 74 before any episode runs."""
    _, _, ref = setup
    with small_fs(tmp_path, "1m") as fs:
        if fs is None:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        subprocess.run(["mount", "-o", "remount,ro", str(fs.path)], check=True)
        out = fs.path / "eval"
        r = geo3d(["eval", "--ckpt", str(ref), "--suite", "libero_spatial", "--tasks", "0", "--episodes-per-task",
                   "1", "--out", str(out)])
        assert r.returncode == STORAGE_FAULT_EXIT_CODE, r.stderr[-3000:]
        assert "eval: storage fault: the filesystem is read-only (EROFS)" in r.stderr
        assert "resume with: geo3d eval" in r.stderr and "--resume" in r.stderr
