"""Which worker am I? From --shard/--num-shards, a SLURM array, torchrun, or both (an array of torchruns).

The worker slot only picks a *starting point* in the store (see `shard_planner.py`); the store's shards are the unit
of work and any number of workers, started at any time, completes the store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from geo3d.core.errors import Geo3dError


@dataclass(frozen=True)
class WorkerSlot:
    rank: int
    world: int
    local_rank: int | None  # torchrun's LOCAL_RANK: picks the GPU
    source: str  # flags | slurm_array | torchrun | slurm_array+torchrun | single


def _int_env(env: Mapping[str, str], key: str) -> int | None:
    value = env.get(key)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise Geo3dError(f"environment variable {key}={value!r} is not an integer") from None


def _slurm_array(env: Mapping[str, str]) -> tuple[int, int] | None:
    """(rank, count) of this SLURM array task; ids may start anywhere and step (e.g. --array=1-15:2)."""
    task, count = _int_env(env, "SLURM_ARRAY_TASK_ID"), _int_env(env, "SLURM_ARRAY_TASK_COUNT")
    if task is None:
        return None
    if count is None:
        raise Geo3dError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; pass --shard/--num-shards")
    low = _int_env(env, "SLURM_ARRAY_TASK_MIN") or 0
    step = _int_env(env, "SLURM_ARRAY_TASK_STEP") or 1
    rank = (task - low) // step
    if not 0 <= rank < count:
        raise Geo3dError(f"SLURM array task {task} (min {low}, step {step}) is outside 0..{count - 1}; "
                         "pass --shard/--num-shards explicitly")
    return rank, count


def _torchrun(env: Mapping[str, str]) -> tuple[int, int, int | None] | None:
    rank, world = _int_env(env, "RANK"), _int_env(env, "WORLD_SIZE")
    if rank is None or world is None:
        return None
    if not 0 <= rank < world:
        raise Geo3dError(f"RANK={rank} is outside 0..WORLD_SIZE-1 ({world - 1})")
    return rank, world, _int_env(env, "LOCAL_RANK")


def worker_slot(shard: int | None, num_shards: int | None, env: Mapping[str, str] | None = None) -> WorkerSlot:
    """Explicit flags win; else SLURM array x torchrun (either or both); else a single worker."""
    env = os.environ if env is None else env
    local = _int_env(env, "LOCAL_RANK")
    if shard is not None or num_shards is not None:
        if shard is None or num_shards is None:
            raise Geo3dError("give --shard and --num-shards together (e.g. --shard 0 --num-shards 4)")
        if num_shards < 1 or not 0 <= shard < num_shards:
            raise Geo3dError(f"--shard {shard} must be in 0..{num_shards - 1} (--num-shards {num_shards})")
        return WorkerSlot(shard, num_shards, local, "flags")
    array, tr = _slurm_array(env), _torchrun(env)
    if array and tr:
        return WorkerSlot(array[0] * tr[1] + tr[0], array[1] * tr[1], tr[2], "slurm_array+torchrun")
    if array:
        return WorkerSlot(array[0], array[1], local, "slurm_array")
    if tr:
        return WorkerSlot(tr[0], tr[1], tr[2], "torchrun")
    return WorkerSlot(0, 1, local, "single")
