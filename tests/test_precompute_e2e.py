"""`geo3d precompute` as real processes: kill -9 + resume, concurrent workers, changed --num-shards, SIGTERM,
identity refusal, and `geo3d verify-cache` on the result. Tiny encoder, tiny T/D, small synthetic dataset."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from geo3d.features_store import FeatureStore
from geo3d.features_store.store import open_arrays

from data_fixtures import make_synthetic_libero
from helpers import REPO

pytestmark = pytest.mark.slow  # real precompute subprocesses, kill -9 and resume


SMALL = ["--batch-size", "4", "data.image_size=56", "encoder.tokens_per_view=4", "encoder.tiny.width=32",
         "encoder.tiny.heads=2", "encoder.tiny.out_dim=16", "store.shard_frames=8", "precompute.decode_workers=0"]
NUM_SHARDS = 33  # 2 suites x (45 + 30 + 55) frames = 260 frames / 8


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("libero")
    return make_synthetic_libero(root, suites=("libero_spatial", "libero_object"), episodes_per_suite=3,
                                 lengths=[45, 30, 55], size=64)


def _cmd(data_root: Path, store: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "geo3d.cli", "precompute", "--suite", "demo", "--data-root", str(data_root),
            "--store", str(store), *SMALL, *extra]


def _run(cmd: list[str], expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc


def _commits(store: Path) -> dict[str, tuple[bytes, int]]:
    d = store / "commits"
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in d.glob("*.json")} if d.is_dir() else {}


def _start_and_kill_after(cmd: list[str], store: Path, commits: int, sig: int = signal.SIGKILL,
                          children: list | None = None) -> subprocess.Popen:
    """Start a worker, send `sig` once the store holds >= `commits` markers; the worker must still be running.
    `children` (a list) receives the worker's child processes seen just before the signal."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.monotonic() + 120
    while len(_commits(store)) < commits and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, f"worker finished before {commits} commits: make the test dataset larger"
    if children is not None:
        children += psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, sig)
    return proc


def _encoded_shards(store: Path) -> list[int]:
    """Every shard any worker encoded, from the workers' shard logs (one JSON line per encoded shard)."""
    out = []
    for log in (store / "precompute_logs").glob("*.shards.jsonl"):
        out += [json.loads(line)["shard"] for line in log.read_text().splitlines()]
    return out


def _contents(store: Path) -> dict[str, np.ndarray]:
    return {k: np.asarray(a[:]) for k, a in open_arrays(store).items()}


def _assert_same_store(a: Path, b: Path) -> None:
    ca, cb = _contents(a), _contents(b)
    assert ca.keys() == cb.keys()
    for k in ca:
        assert np.array_equal(ca[k], cb[k]), f"array {k} differs"
    digests = lambda s: {n: json.loads(v[0])["index_digest"] for n, v in _commits(s).items()}  # noqa: E731
    assert digests(a) == digests(b) and len(digests(a)) == NUM_SHARDS


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory) -> Path:
    """An uninterrupted single-worker run; `verify-cache` (with a bit-exact CPU recompute) passes on it."""
    store = tmp_path_factory.mktemp("ref") / "store.zarr"
    proc = _run(_cmd(data_root, store))
    assert "store complete" in proc.stdout and "frames/s" in proc.stdout and "bytes written" in proc.stdout
    assert sorted(_encoded_shards(store)) == list(range(NUM_SHARDS))
    verify = subprocess.run([sys.executable, "-m", "geo3d.cli", "verify-cache", str(store), "--data-root",
                             str(data_root), "--deep", "--recompute", "6"], capture_output=True, text=True,
                            cwd=REPO, timeout=300)
    assert verify.returncode == 0 and "CLEAN" in verify.stdout, verify.stdout + verify.stderr
    return store


def test_kill9_at_several_points_then_resume_is_bit_identical(data_root, reference, tmp_path):
    store = tmp_path / "store.zarr"
    before: dict[str, tuple[bytes, int]] = {}
    for i, at in enumerate((0, 3, 12, 24)):
        extra = ["precompute.decode_workers=1"] if i == 2 else []  # also a run with a decode process
        children: list = []
        proc = _start_and_kill_after(_cmd(data_root, store, *extra), store, at, children=children)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        now = _commits(store)
        assert all(now[k] == v for k, v in before.items()), "a committed shard was rewritten"
        before = now
        if i == 2:  # decode processes do not outlive a killed worker
            assert children
            for c in children:
                c.wait(timeout=10)
    logs_before = set((store / "precompute_logs").glob("*.shards.jsonl"))
    _run(_cmd(data_root, store))
    final = _commits(store)
    assert all(final[k] == v for k, v in before.items()), "resume rewrote a committed shard"
    new_logs = set((store / "precompute_logs").glob("*.shards.jsonl")) - logs_before
    resumed = {json.loads(line)["shard"] for log in new_logs for line in log.read_text().splitlines()}
    done_before = {int(name[6:12]) for name in before}
    assert resumed and not resumed & done_before, "resume re-encoded a committed shard"
    assert resumed | done_before == set(range(NUM_SHARDS))
    _assert_same_store(store, reference)


def test_workers_started_together_after_a_changed_num_shards(data_root, reference, tmp_path):
    store = tmp_path / "store.zarr"
    first = _start_and_kill_after(_cmd(data_root, store, "--shard", "1", "--num-shards", "2"), store, 5)
    first.wait(timeout=30)
    kept = _commits(store)
    assert kept
    procs = [subprocess.Popen(_cmd(data_root, store, "--shard", str(i), "--num-shards", "3",
                                   f"precompute.writer_threads={i + 1}"), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1][-2000:] for o in outs]
    final = _commits(store)
    assert all(final[k] == v for k, v in kept.items())
    encoded = _encoded_shards(store)  # logged after each commit (kill -9 may beat the log line, never the marker)
    assert len(encoded) == len(set(encoded)), "a shard was encoded twice"
    assert set(encoded) | {int(n[6:12]) for n in kept} == set(range(NUM_SHARDS))
    _assert_same_store(store, reference)


def test_sigterm_commits_and_exits_then_resume(data_root, reference, tmp_path):
    store = tmp_path / "store.zarr"
    proc = _start_and_kill_after(_cmd(data_root, store), store, 4, sig=signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err[-2000:]
    assert "received SIGTERM" in err and "Rerun the same command to resume (exit 75)" in err
    assert 4 <= len(_commits(store)) < NUM_SHARDS
    assert sorted(_encoded_shards(store)) == sorted(int(n[6:12]) for n in _commits(store))  # nothing half-done
    _run(_cmd(data_root, store))
    _assert_same_store(store, reference)


def test_ctrl_c_commits_and_exits_130_not_the_requeue_code_then_resume(data_root, reference, tmp_path):
    """Issue 25 row 9: a user's Ctrl-C saves like a preemption but exits 130, so a requeueing wrapper (75) never
    requeues it; the rerun resumes to the same store."""
    store = tmp_path / "store.zarr"
    proc = _start_and_kill_after(_cmd(data_root, store), store, 3, sig=signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "received SIGINT" in err and "stopped on SIGINT (Ctrl-C)" in err and "exit 130" in err, err[-2000:]
    assert "Traceback" not in err
    assert sorted(_encoded_shards(store)) == sorted(int(n[6:12]) for n in _commits(store))  # nothing half-done
    _run(_cmd(data_root, store))
    _assert_same_store(store, reference)


def test_sigusr1_is_a_preemption_signal_too(data_root, tmp_path):
    store = tmp_path / "store.zarr"
    proc = _start_and_kill_after(_cmd(data_root, store), store, 2, sig=signal.SIGUSR1)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75 and "received SIGUSR1" in err, err[-2000:]
    assert sorted(_encoded_shards(store)) == sorted(int(n[6:12]) for n in _commits(store))


def test_store_of_another_encoder_is_refused_overwrite_is_explicit(data_root, reference, tmp_path):
    store = tmp_path / "store.zarr"
    shutil.copytree(reference, store)
    before = _commits(store)
    proc = _run(_cmd(data_root, store, "encoder.tiny.seed=1"), expect=2)
    assert "different configuration" in proc.stderr and "encoder" in proc.stderr and "Traceback" not in proc.stderr
    assert _commits(store) == before  # nothing lost
    proc = _run(_cmd(data_root, store, "data.image_size=84"), expect=2)
    assert "preprocessing" in proc.stderr
    proc = _run(_cmd(data_root, store, "--overwrite", "--shard", "0", "--num-shards", "2"), expect=2)
    assert "--overwrite with 2 workers" in proc.stderr
    _run(_cmd(data_root, store, "encoder.tiny.seed=1", "--overwrite"))

    assert FeatureStore.open(store).spec.encoder["config"]["seed"] == 1


def test_batches_across_shards_kill9_then_resume_with_another_batch_size_is_bit_identical(data_root, reference,
                                                                                        tmp_path):
    """Batches of 20 frames span three 8-frame shards; a kill -9 leaves no half shard; the resume (batches of 12,
    padded to full size) completes a store bit-identical to the reference's 4-frame batches."""
    store = tmp_path / "store.zarr"
    proc = _start_and_kill_after(_cmd(data_root, store, "--batch-size", "20"), store, 5)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    kept = _commits(store)
    _run(_cmd(data_root, store, "--batch-size", "12", "precompute.full_batches=true"))
    assert all(_commits(store)[k] == v for k, v in kept.items()), "resume rewrote a committed shard"
    _assert_same_store(store, reference)
