"""Full disk, quota and failing storage during `geo3d precompute`, as real processes on a real small tmpfs:
one message + exit 74, nothing half-written counted, and the rerun after freeing space gives the same store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # real `geo3d precompute` processes (decode workers, fault injection) on real filesystems

import os
import shutil
import subprocess
import sys
import time

from geo3d.core.storage_faults import STORAGE_FAULT_EXIT_CODE
from geo3d.features_store.store import open_arrays

from data_fixtures import make_synthetic_libero
from storage_fixtures import geo3d, small_fs

# 16 tokens x 512 dims x 2 views x bf16 = 32 KiB per frame, 8-frame shards (256 KiB): 130 frames ~ 4.2 MB.
SMALL = ["--batch-size", "4", "data.image_size=56", "encoder.tokens_per_view=16", "encoder.tiny.width=32",
         "encoder.tiny.heads=2", "encoder.tiny.out_dim=512", "store.shard_frames=8", "precompute.decode_workers=0"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_synthetic_libero(tmp_path_factory.mktemp("libero"), suites=("libero_spatial",),
                                 episodes_per_suite=3, lengths=[45, 30, 55], size=64)


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("ref") / "store"
    r = geo3d(_args(data_root, store))
    assert r.returncode == 0, r.stderr[-3000:]
    return store


def _args(data_root: Path, store: Path, *extra: str) -> list[str]:
    return ["precompute", "--suite", "libero_spatial", "--data-root", str(data_root), "--store", str(store), *SMALL, *extra]


def _contents(store: Path) -> dict[str, np.ndarray]:
    return {k: np.asarray(a[:]) for k, a in open_arrays(store).items()}


def _assert_same(a: Path, b: Path) -> None:
    ca, cb = _contents(a), _contents(b)
    assert ca.keys() == cb.keys() and all(np.array_equal(ca[k], cb[k]) for k in ca)


def _assert_fault_message(err: str, what: str, store: Path) -> None:
    assert "Traceback" not in err, err[-3000:]
    for part in (f"precompute: storage fault: {what}", f"where: {store}", "free space:", "still needs ~",
                 "already safe:", "shards committed", "resume with: geo3d precompute --suite libero_spatial"):
        assert part in err, (part, err[-3000:])


def _no_partial_shards(store: Path) -> None:
    """Every token shard file on disk belongs to a committed shard (the cut one was removed)."""
    committed = {int(p.name[6:12]) for p in (store / "commits").glob("shard-*.json")}
    tok = store / "tokens" / "c"
    on_disk = {int(p.relative_to(tok).parts[0]) for p in tok.rglob("*") if p.is_file()} if tok.is_dir() else set()
    assert on_disk <= committed, sorted(on_disk - committed)
    assert not list((store / "commits").glob(".*.tmp"))


def test_full_disk_then_free_space_resumes_to_identical_store(data_root, reference, tmp_path):
    with small_fs(tmp_path, "2m") as fs:
        if fs is None:  # not root: the same path through a failing chunk writer
            _injected_fault_then_rerun_is_identical(data_root, reference, tmp_path, "ENOSPC",
                                                    "the filesystem is full (ENOSPC)")
            return
        store = fs.path / "store"
        r = geo3d(_args(data_root, store))
        assert r.returncode == STORAGE_FAULT_EXIT_CODE, r.stderr[-3000:]
        _assert_fault_message(r.stderr, "the filesystem is full (ENOSPC)", store)
        assert "warning: the store at" in r.stderr  # the start-up free-space check saw it coming
        _no_partial_shards(store)
        done = len(list((store / "commits").glob("shard-*.json")))
        assert 0 < done < 17, done
        fs.resize("16m")  # "free space"
        r = geo3d(_args(data_root, store))
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"({17 - done} to do)" in r.stderr
        _assert_same(store, reference)
        v = geo3d(["verify-cache", str(store), "--data-root", str(data_root)])
        assert v.returncode == 0, v.stdout[-2000:] + v.stderr[-2000:]


def test_require_space_refuses_before_any_work(data_root, tmp_path):
    with small_fs(tmp_path, "1m") as fs:
        if fs is None:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        store = fs.path / "store"
        r = geo3d(_args(data_root, store, "--require-space"))
        assert r.returncode == 2 and "--require-space" in r.stderr and "still needs ~" in r.stderr, r.stderr[-2000:]
        assert not list((store / "commits").glob("shard-*.json"))


@pytest.mark.parametrize("name,what", [("EDQUOT", "your disk quota is exhausted (EDQUOT)"),
                                       ("EIO", "the storage reported an I/O error (EIO)")])
def test_injected_fault_then_rerun_is_identical(data_root, reference, tmp_path, name, what):
    """Quota and I/O errors (no real filesystem here makes them) via a failing zarr chunk writer."""
    _injected_fault_then_rerun_is_identical(data_root, reference, tmp_path, name, what)


def _injected_fault_then_rerun_is_identical(data_root: Path, reference: Path, tmp_path: Path, name: str,
                                            what: str) -> None:
    store = tmp_path / "store"
    r = geo3d(_args(data_root, store), inject=(name, "zarr", 40))
    assert r.returncode == STORAGE_FAULT_EXIT_CODE, r.stderr[-3000:]
    _assert_fault_message(r.stderr, what, store)
    if name == "EDQUOT":
        assert "quota -s" in r.stderr
    _no_partial_shards(store)
    r = geo3d(_args(data_root, store))
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same(store, reference)


def test_read_only_store_is_a_storage_fault(data_root, reference, tmp_path):
    with small_fs(tmp_path, "16m") as fs:
        if fs is None:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        store = fs.path / "store"
        shutil.copytree(reference, store)
        for marker in sorted((store / "commits").glob("shard-*.json"))[-3:]:
            marker.unlink()  # three shards left to do
        subprocess.run(["mount", "-o", "remount,ro", str(fs.path)], check=True)
        r = geo3d(_args(data_root, store))
        assert r.returncode == STORAGE_FAULT_EXIT_CODE, r.stderr[-3000:]
        assert "read-only (EROFS)" in r.stderr and "14 of 17 shards committed" in r.stderr, r.stderr[-3000:]


def test_store_directory_vanishing_mid_run_is_a_storage_fault(data_root, tmp_path):
    """The store deleted under a running worker (a cleanup script, an unmounted scratch): exit 74, not a traceback."""
    from storage_fixtures import REPO
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "geo3d.cli", *_args(data_root, store, "--batch-size", "1")],
                            cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list((store / "commits").glob("shard-*.json"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "precompute finished before the store could be removed"
    os.rename(store, tmp_path / "moved-away")  # atomic, unlike rmtree racing the writer
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == STORAGE_FAULT_EXIT_CODE, err[-3000:]
    assert "storage fault: the output directory vanished (ENOENT)" in err and "Traceback" not in err, err[-3000:]
