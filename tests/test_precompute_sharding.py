"""Worker slots from flags / SLURM arrays / torchrun, and the shard planner against a real store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geo3d.core.errors import Geo3dError
from geo3d.features_store import FeatureStore, StoreLayout, StoreSpec
from geo3d.precompute.shard_planner import ShardPlanner, missing_runs
from geo3d.precompute.worker_slot import worker_slot


def test_flags_win_over_environment():
    s = worker_slot(2, 4, {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "8", "LOCAL_RANK": "1"})
    assert (s.rank, s.world, s.local_rank, s.source) == (2, 4, 1, "flags")


@pytest.mark.parametrize("shard,num", [(1, None), (None, 3), (3, 3), (-1, 2), (0, 0)])
def test_bad_flags_are_clear_errors(shard, num):
    with pytest.raises(Geo3dError, match="--shard"):
        worker_slot(shard, num, {})


def test_slurm_array_with_offset_and_step():
    env = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1",
           "SLURM_ARRAY_TASK_STEP": "2"}  # --array=1-7:2 -> tasks 1,3,5,7
    s = worker_slot(None, None, env)
    assert (s.rank, s.world, s.source) == (3, 4, "slurm_array")


def test_torchrun_and_array_of_torchruns():
    tr = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3"}
    s = worker_slot(None, None, tr)
    assert (s.rank, s.world, s.local_rank, s.source) == (3, 8, 3, "torchrun")
    both = worker_slot(None, None, {**tr, "SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3"})
    assert (both.rank, both.world, both.local_rank) == (2 * 8 + 3, 24, 3)


def test_single_worker_default_and_bad_env():
    assert worker_slot(None, None, {}).world == 1
    with pytest.raises(Geo3dError, match="SLURM_ARRAY_TASK_COUNT"):
        worker_slot(None, None, {"SLURM_ARRAY_TASK_ID": "1"})
    with pytest.raises(Geo3dError, match="not an integer"):
        worker_slot(None, None, {"RANK": "x", "WORLD_SIZE": "2"})


def test_missing_runs_longest_first():
    assert missing_runs(10, {0, 4, 5}) == [(6, 10), (1, 4)]
    assert missing_runs(3, {0, 1, 2}) == []


@pytest.fixture
def store(tmp_path: Path):
    spec = StoreSpec(frames=40, views=2, tokens=1, dim=2, encoder={"name": "t", "fingerprint": "f", "config": {}},
                     preprocessing={}, dataset={"suite": "x"}, layout=StoreLayout(shard_frames=4))
    return FeatureStore.open_or_create(tmp_path / "s", spec)


def _commit(store, shard: int) -> None:
    n = len(store.shard_range(shard))
    idx = {k: np.zeros(n, np.int64) for k in ("dataset_id", "episode_index", "frame_index")}
    idx["content_id"] = np.arange(n, dtype=np.uint64)
    store.write_shard(shard, torch.ones((n, 2, 1, 2), dtype=torch.bfloat16), idx)


def test_planner_starts_at_own_block_and_walks_forward(store):
    got = []
    for lease in ShardPlanner(store, rank=1, world=2):
        got.append(lease.shard)
        lease.release()
        if lease.shard in (5, 6):
            _commit(store, lease.shard)
        if len(got) == 3:
            break
    assert got[:2] == [5, 6]  # block of rank 1 of 2 is shards 5..9


def test_planner_skips_committed_and_held_shards_and_finishes(store):
    for s in (0, 1, 2):
        _commit(store, s)
    other = FeatureStore.open(store.path)  # another handle = another "worker" holding shard 6
    held = other.try_claim(6)
    order = []
    for lease in ShardPlanner(store, rank=0, world=1):
        order.append(lease.shard)
        _commit(store, lease.shard)
        lease.release()
    assert order[0] == 3 and 6 not in order and set(order) == set(range(3, 10)) - {6}
    held.release()
    assert store.missing_shards() == [6]
    assert [lease.shard for lease in ShardPlanner(store, rank=5, world=7)] == [6]  # any N finishes the job


def test_planner_steals_from_the_middle_of_a_held_run(store):
    other = FeatureStore.open(store.path)
    held = other.try_claim(0)  # someone is working from the front of the only run
    first = next(iter(ShardPlanner(store, rank=0, world=1)))
    assert first.shard == 5  # middle of run [0, 10): away from the holder walking forward
    first.release()
    held.release()
