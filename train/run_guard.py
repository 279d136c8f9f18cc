"""A training run directory guarded like the store: one process tree at a time, a marker saying it is a geo3d
run, and nothing useless left by a start that failed.

- A lease (geo3d.core.lease: flock + owner record, the store's mechanism) on `<run>/.geo3d_run.lock`, taken
  before anything else is written and held until the process exits: a second `geo3d train --out SAME` is
  refused at once (exit 2) naming the holder, and touches nothing.
- The started marker `<run>/geo3d_run.json` (who started it, when): a non-empty folder without it (and without
  the files of a run made before the marker existed) is not a geo3d run and is refused as --out.
- A run dir whose run never reached a checkpoint is restartable by a plain rerun: its leftovers are cleared and
  the run starts afresh. A start that fails before its first logged step removes what it wrote (the folder too,
  if it made it). A run with a checkpoint needs --resume (or another --out), as before.
Only the main process (RANK 0) takes the lease and writes; the other ranks of a multi-GPU run read.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from geo3d.core.errors import Geo3dError
from geo3d.core.lease import FileLease, describe_owner, lock_scope_problem, owner_record, read_owner, try_lock
from geo3d.policy.run_dir import (CKPT_DIR, METRICS_FILE, NORM_STATS_FILE, PROVENANCE_FILE, RESOLVED_CONFIG,
                                  latest_checkpoint)

LOCK_FILE = ".geo3d_run.lock"
RUN_MARKER = "geo3d_run.json"
# What `geo3d train` writes in a run dir (eval_* results of `geo3d eval` live there too, once a checkpoint exists).
RUN_FILES = (RUN_MARKER, METRICS_FILE, PROVENANCE_FILE, RESOLVED_CONFIG, NORM_STATS_FILE, CKPT_DIR, "wandb")


def is_main_rank() -> bool:
    """Rank 0 of a torchrun/accelerate launch (or a plain process): known before the Accelerator exists."""
    return os.environ.get("RANK", "0") == "0"


class RunDirLease:
    """The held claim on a run directory; `finish(ok)` at exit releases it (and cleans up a failed start)."""

    def __init__(self, run_dir: Path, lease: FileLease | None, created: bool) -> None:
        self.run_dir, self._lease, self._created = run_dir, lease, created

    def finish(self, ok: bool) -> None:
        """Release. A failed start that logged no step and saved no checkpoint leaves nothing behind."""
        if self._lease is None:
            return
        try:
            if not ok and latest_checkpoint(self.run_dir) is None and not _logged_a_step(self.run_dir):
                _remove_run_files(self.run_dir)
                if self._created:
                    (self.run_dir / LOCK_FILE).unlink(missing_ok=True)  # while held: no one can take it now
        finally:
            self._lease.release()
            self._lease = None
        if not ok and self._created:
            try:
                self.run_dir.rmdir()  # only if empty: a concurrent claimant's files are never removed
            except OSError:
                pass


def claim_run_dir(run_dir: Path, resume: bool) -> RunDirLease:
    """Refuse a foreign folder or a run in use; clear a run that never reached a checkpoint; write the marker."""
    if not is_main_rank():
        return RunDirLease(run_dir, None, False)
    refuse_foreign(run_dir)
    if not resume:
        _refuse_finished(run_dir)  # before locking: a refused rerun does not even rewrite the lock's owner
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lease = try_lock(run_dir / LOCK_FILE)
    if lease is None:
        raise Geo3dError(f"run directory {run_dir} is in use by another `geo3d train` "
                         f"({describe_owner(read_owner(run_dir / LOCK_FILE))}); nothing was changed. Wait for it "
                         f"to end, or pass --out NEW_DIR for a new run (only if that process is gone, e.g. its node "
                         f"died while NFS/Lustre kept its lock: delete {run_dir / LOCK_FILE} and rerun)")
    guard = RunDirLease(run_dir, lease, created)
    try:
        _start(run_dir, resume)
    except BaseException:
        guard.finish(ok=True)  # refused: release without touching anything
        raise
    problem = lock_scope_problem(run_dir)
    if problem:
        print(f"train: warning: {run_dir}: {problem}", file=sys.stderr, flush=True)
    return guard


def refuse_foreign(run_dir: Path) -> None:
    """A non-empty folder that is not a geo3d run (a user's files) is never written into."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise Geo3dError(f"--out {run_dir} is a file, not a folder; pass --out NEW_DIR")
    entries = sorted(p.name for p in run_dir.iterdir())
    if entries and not ({LOCK_FILE, *RUN_FILES} & set(entries)):
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise Geo3dError(f"--out {run_dir} is not empty and is not a geo3d run (it holds {shown}); nothing was "
                         f"written. Pass --out NEW_DIR (a new or empty folder)")


def _start(run_dir: Path, resume: bool) -> None:
    """Under the lease: a run with a checkpoint needs --resume; one without is cleared and started afresh."""
    if not resume:
        _refuse_finished(run_dir)  # again under the lease: a run may have checkpointed meanwhile
    if latest_checkpoint(run_dir) is not None:
        return
    leftovers = [n for n in RUN_FILES if (run_dir / n).exists()]
    if leftovers:
        started = (_read_json(run_dir / RUN_MARKER) or {}).get("started_utc", "an earlier launch")
        print(f"train: {run_dir} holds a run started {started} that never reached a checkpoint; clearing it "
              f"({', '.join(leftovers)}) and starting afresh", file=sys.stderr, flush=True)
        _remove_run_files(run_dir)
    _write_marker(run_dir)


def _refuse_finished(run_dir: Path) -> None:
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        raise Geo3dError(f"run directory {run_dir} already holds a run (checkpoint {ckpt}); pass --resume to "
                         f"continue it, or --out NEW_DIR for a new run")


def _write_marker(run_dir: Path) -> None:
    record = {"kind": "geo3d training run", "started_utc": owner_record()["claimed_utc"], "owner": owner_record(),
              "argv": sys.argv}
    tmp = run_dir / f".{RUN_MARKER}.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, run_dir / RUN_MARKER)


def _remove_run_files(run_dir: Path) -> None:
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _logged_a_step(run_dir: Path) -> bool:
    try:
        return (run_dir / METRICS_FILE).stat().st_size > 0
    except OSError:
        return False


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
