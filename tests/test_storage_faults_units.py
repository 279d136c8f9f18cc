"""geo3d.core.storage_faults: which errors are storage faults, the message, the size estimate, `geo3d submit` on a
read-only filesystem, and the SLURM job library never requeueing on exit 74."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from geo3d.core.storage_faults import (
    STORAGE_FAULT_EXIT_CODE,
    StorageFault,
    classify,
    guard_writes,
    resume_command,
    storage_guard,
)
from geo3d.features_store.export import read_export, run_export
from geo3d.features_store.store_size import du_bytes, remaining_bytes, spec_bytes
from geo3d.features_store.testing import make_synthetic_store

from helpers import REPO, run_geo3d, spawn_geo3d
from storage_fixtures import small_fs


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ESTALE])
def test_errnos_are_faults(code, tmp_path):
    assert classify(OSError(code, os.strerror(code), "x"), tmp_path) == (code, "x")


def test_wrapped_library_errors_are_faults(tmp_path):
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as inner:
            raise RuntimeError("checkpoint save failed") from inner
    except RuntimeError as e:
        assert classify(e, tmp_path)[0] == errno.EDQUOT
    safetensors_like = Exception("Error while serializing: I/O error: No space left on device (os error 28)")
    assert classify(safetensors_like, tmp_path)[0] == errno.ENOSPC
    # torch.save's opaque message counts only when the disk really is (nearly) full: here it is not
    assert classify(RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), tmp_path) is None


def test_enoent_only_when_the_output_directory_vanished(tmp_path):
    out = tmp_path / "out"
    (out / "commits").mkdir(parents=True)
    missing_input = FileNotFoundError(errno.ENOENT, "No such file", str(tmp_path / "data" / "input.parquet"))
    assert classify(missing_input, out) is None  # bad input, not a storage fault
    missing_here = FileNotFoundError(errno.ENOENT, "No such file", str(out / "commits" / "x.json"))
    assert classify(missing_here, out) is None  # its directory exists: a missing file, not a vanished tree
    (out / "commits").rmdir()
    assert classify(missing_here, out)[0] == errno.ENOENT  # a directory the job writes into went away
    shutil.rmtree(out)
    assert classify(FileNotFoundError(errno.ENOENT, "No such file"), out, root_existed=True)[0] == errno.ENOENT
    assert classify(FileNotFoundError(errno.ENOENT, "No such file"), out, root_existed=False) is None
    assert classify(ValueError("no"), tmp_path) is None


def test_guard_message_hooks_cleanup_and_passthrough(tmp_path):
    cleaned = []
    with pytest.raises(StorageFault) as info:
        with storage_guard("export", tmp_path, resume="geo3d export --resume", needed=lambda: 3 << 30,
                           safe=lambda: "episodes 0-9", cleanup=lambda: cleaned.append(1)):
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "part.parquet"))
    msg, fault = str(info.value), info.value
    assert fault.exit_code == STORAGE_FAULT_EXIT_CODE == 74 and fault.errno == errno.ENOSPC and cleaned == [1]
    for part in ("export: storage fault: the filesystem is full (ENOSPC)", f"{tmp_path}/part.parquet",
                 "still needs ~3.0 GiB", "already safe: episodes 0-9", "resume with: geo3d export --resume"):
        assert part in msg, (part, msg)
    with pytest.raises(KeyError):  # anything else is not ours to rename
        with storage_guard("export", tmp_path):
            raise KeyError("x")

    def broken_hook():
        raise OSError(errno.EIO, "I/O error")

    @guard_writes("export", lambda out: out, safe=broken_hook)
    def write(out: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(StorageFault, match="could not determine"):  # a failing hook never hides the fault
        write(tmp_path)


def test_resume_command_drops_overwrite_and_adds_resume():
    assert resume_command(["precompute", "--store", "a b", "--overwrite"], drop=("--overwrite",)) == \
        "geo3d precompute --store 'a b'"
    assert resume_command(["train", "--out", "r"], add=("--resume",)) == "geo3d train --out r --resume"
    assert resume_command(["train", "--resume"], add=("--resume",)) == "geo3d train --resume"


def test_store_size_estimate_matches_a_real_store(tmp_path):
    """The estimate behind --require-space, the fault message and doctor, against bytes really allocated."""
    store = make_synthetic_store(tmp_path / "s", frames=100, views=2, tokens=16, dim=256, shard_frames=16)
    spec = store.spec
    est, real = spec_bytes(spec), du_bytes(store.path)
    assert 0.8 * real <= est <= 1.5 * real, (est, real)
    assert remaining_bytes(spec, list(range(spec.num_shards))) == 0
    assert remaining_bytes(spec, []) == spec_bytes(spec, spec.frames)


def test_submit_onto_read_only_filesystem_is_a_storage_fault(tmp_path):
    with small_fs(tmp_path, "1m") as fs:
        if fs is None:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        subprocess.run(["mount", "-o", "remount,ro", str(fs.path)], check=True)
        r = run_geo3d(["submit", "verify", "--store", str(tmp_path / "s"), f"slurm.submit_dir={fs.path}/subs"],
                      expect=None)
        assert r.returncode == STORAGE_FAULT_EXIT_CODE, r.stderr[-2000:]
        assert "submit verify: storage fault: the filesystem is read-only (EROFS)" in r.stderr
        assert "nothing was submitted" in r.stderr


@pytest.mark.parametrize("rc,requeued", [(74, False), (75, True)])
def test_job_lib_never_requeues_a_storage_fault(tmp_path, rc, requeued):
    script = f"""
scontrol() {{ echo "$@" >> {tmp_path}/scontrol.log; }}
SLURM_JOB_ID=7 REQUEUE_EXIT_CODES="75 1" STORAGE_FAULT_EXIT_CODE={STORAGE_FAULT_EXIT_CODE}
source {REPO}/scripts/slurm/job_lib.sh
GEO3D_SIGNALLED=USR1
finish {rc}
"""
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    log = tmp_path / "scontrol.log"
    assert log.exists() == requeued, r.stderr
    assert r.returncode == (0 if requeued else rc)
    if not requeued:
        assert "storage fault (exit 74): NOT requeueing" in r.stderr


@pytest.mark.slow  # a real process: after a failed HDF5 flush export leaves with os._exit (export_cli.py)
@pytest.mark.parametrize("fmt", ["hdf5", "npy"])  # hdf5: its own exit path; npy and pt share the plain-file path
def test_export_onto_a_full_disk_then_rerun_is_identical(tmp_path, fmt):
    """`geo3d export` filling a real small tmpfs: exit 74, nothing half-written left, identical after growing it."""
    store = make_synthetic_store(tmp_path / "store", frames=64, tokens=16, dim=512, shard_frames=8).path  # 2 MB
    ref = tmp_path / f"ref.{fmt}"
    run_export(store, fmt, ref, progress=False)  # the export onto a large disk
    with small_fs(tmp_path, "1m") as fs:
        if fs is None:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        out = fs.path / f"tokens.{fmt}"
        r = spawn_geo3d(["export", str(store), "--format", fmt, "--out", str(out), "--no-progress"], expect=None)
        assert r.returncode == STORAGE_FAULT_EXIT_CODE, r.stderr[-3000:]
        for part in ("export: storage fault: the filesystem is full (ENOSPC)", "still needs ~2.0 MiB",
                     "no partial export is left", f"resume with: geo3d export {store}"):
            assert part in r.stderr, (part, r.stderr[-3000:])
        assert list(fs.path.iterdir()) == []  # the temp output was removed
        fs.resize("8m")
        spawn_geo3d(["export", str(store), "--format", fmt, "--out", str(out), "--no-progress"])
        (_, blocks_a, idx_a), (_, blocks_b, idx_b) = read_export(ref, fmt), read_export(out, fmt)
        assert np.array_equal(np.concatenate(list(blocks_a)), np.concatenate(list(blocks_b)))
        assert idx_a.keys() == idx_b.keys() and all(np.array_equal(idx_a[k], idx_b[k]) for k in idx_a)
