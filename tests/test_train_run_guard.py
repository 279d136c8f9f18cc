"""The training run directory guarded like the store (issue 25 rows 1, 4, 7, 11): a lease, a started marker,
nothing left by a failed start, a user's folder never written into. In-process `geo3d train` (CliRunner) on
copies of the demo data; the two-process race is in test_train_signals_and_races.py (slow)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from demo_copies import copy_demo, parquet_path, set_task_index, snapshot
from geo3d.core.lease import try_lock
from geo3d.policy.run_dir import list_checkpoints
from geo3d.train.run_guard import LOCK_FILE, RUN_MARKER
from helpers import run_geo3d


def train(root: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    args = ["train", "--suite", "demo", "--config", "train/demo", "--data-root", str(root), "--compressor", "none",
            "--out", str(out),
            "--max-steps", "2", *extra]
    r = run_geo3d(args, expect=None)
    return r.returncode, r.stdout, r.stderr


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return copy_demo(tmp_path_factory.mktemp("demo") / "data")


@pytest.fixture(scope="module")
def finished_run(root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "done"
    code, _, err = train(root, out)
    assert code == 0, err[-2000:]
    return out


def test_row1_a_run_in_use_is_refused_at_once_and_nothing_is_touched(finished_run, tmp_path):
    """A live `geo3d train` holds the lease (flock: a second open conflicts, even in one process)."""
    resumed = Path(shutil.copytree(finished_run, tmp_path / "run"))
    fresh = tmp_path / "fresh"  # a run that has just started: no checkpoint yet
    fresh.mkdir()
    for run, extra in ((resumed, ("--resume",)), (fresh, ())):
        held = try_lock(run / LOCK_FILE)
        assert held is not None
        before = snapshot(run)  # taken with the lock held: its owner record is the live run's
        try:
            code, _, err = train(Path("unused"), run, *extra)
            assert code == 2, err
            assert err.startswith(f"error: run directory {run} is in use by another `geo3d train`") and \
                "nothing was changed" in err and "--out NEW_DIR" in err, err
            assert snapshot(run) == before
        finally:
            held.release()


def test_row4_a_failed_start_leaves_nothing_and_a_plain_rerun_trains(root, tmp_path):
    data = copy_demo(tmp_path / "data")
    good = parquet_path(data, 1).read_bytes()
    set_task_index(data, 1, 9)  # a task meta/tasks.jsonl does not list
    out = tmp_path / "run"
    code, _, err = train(data, out)
    assert code == 2 and f"{parquet_path(data, 1)}: episode 1 has task_index 9" in err, err
    assert not out.exists()  # nothing left behind
    parquet_path(data, 1).write_bytes(good)
    out.mkdir()  # what a run killed (-9) before its first checkpoint leaves
    (out / RUN_MARKER).write_text(json.dumps({"started_utc": "2026-01-01T00:00:00+00:00"}))
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    (out / "norm_stats.json").write_text("{}")
    code, stdout, err = train(data, out)  # no --resume: restartable, not "already holds a run"
    assert code == 0, err[-2000:]
    assert "never reached a checkpoint; clearing it" in err and "started 2026-01-01T00:00:00+00:00" in err
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and metrics[0]["loss"] != 9.0
    assert [s for s, _ in list_checkpoints(out)] == [2]


def test_a_run_with_a_checkpoint_still_needs_resume(finished_run, tmp_path):
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    before = snapshot(run)
    code, _, err = train(Path("unused"), run)
    assert code == 2 and "already holds a run (checkpoint" in err and "--resume" in err, err
    assert snapshot(run) == before


def test_row7_a_folder_of_user_files_is_refused_as_out(root, tmp_path):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = train(root, out)
    assert code == 2, err
    assert err.startswith(f"error: --out {out} is not empty and is not a geo3d run (it holds notes.txt)"), err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


def test_a_finished_run_records_who_started_it(finished_run):
    marker = json.loads((finished_run / RUN_MARKER).read_text())
    assert marker["kind"] == "geo3d training run" and marker["owner"]["pid"] > 0 and marker["started_utc"]
