"""Features store with real concurrent processes: racing creators, shard-splitting writers, kill -9."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import pytest
import torch

from geo3d.features_store import FeatureReader, FeatureStore
from geo3d.features_store.testing import synthetic_index, synthetic_spec, synthetic_tokens
from geo3d.core.errors import StoreError

CTX = mp.get_context("fork")  # real OS processes; fork keeps start-up cheap


def _create(path, barrier, out) -> None:
    barrier.wait()  # all processes call open_or_create at the same moment (SLURM array start)
    store = FeatureStore.open_or_create(path, synthetic_spec(frames=40, shard_frames=4))
    out.put(store.meta["created_utc"] + "|" + str(store.meta["provenance"]["argv"]) + str(store.meta))


def test_concurrent_initialisation_gives_one_store(tmp_path):
    path, n = tmp_path / "store", 6
    barrier, out = CTX.Barrier(n), CTX.Queue()
    procs = [CTX.Process(target=_create, args=(path, barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * n
    metas = {out.get(timeout=5) for _ in range(n)}
    assert len(metas) == 1  # everyone attached to the same store (one winner's metadata)
    assert [p.name for p in tmp_path.iterdir()] == ["store"]  # losers cleaned up their temp builds


def _work(path, barrier, out, seed) -> None:
    store = FeatureStore.open_or_create(path, synthetic_spec(frames=40, shard_frames=4))
    barrier.wait()
    done = []
    for i in store.missing_shards():
        lease = store.try_claim(i)
        if lease is None:
            continue
        with lease:
            if store.is_committed(i):
                continue
            rng = store.shard_range(i)
            tok = synthetic_tokens(store.spec, rng, seed)
            time.sleep(0.01)  # widen the window in which a second writer could interfere
            store.write_shard(i, tok, synthetic_index(store.spec, rng))
            done.append(i)
    out.put(done)


def test_concurrent_writers_split_shards_and_give_a_valid_store(tmp_path):
    path, n = tmp_path / "store", 3
    barrier, out = CTX.Barrier(n), CTX.Queue()
    procs = [CTX.Process(target=_work, args=(path, barrier, out, 7)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * n
    written = [i for _ in range(n) for i in out.get(timeout=5)]
    assert sorted(written) == list(range(10))  # every shard written exactly once
    reader = FeatureReader(path)
    assert reader.complete
    spec = reader.spec
    for f in range(40):
        assert torch.equal(reader[f].view(torch.int16), synthetic_tokens(spec, range(f, f + 1), 7)[0].view(torch.int16))


def _hold(path, ready) -> None:
    store = FeatureStore.open(path)
    lease = store.try_claim(2)
    assert lease is not None
    ready.set()
    time.sleep(60)


def test_kill_9_releases_the_claim_and_leaves_the_shard_uncommitted(tmp_path):
    path = tmp_path / "store"
    store = FeatureStore.open_or_create(path, synthetic_spec(frames=16, shard_frames=4))
    ready = CTX.Event()
    p = CTX.Process(target=_hold, args=(path, ready))
    p.start()
    assert ready.wait(30)
    assert store.try_claim(2) is None  # the live holder owns it
    with pytest.raises(StoreError, match="live process is writing"):
        FeatureStore.open_or_create(path, store.spec, overwrite=True)
    assert store.is_committed(0) is False and (path / "zarr.json").is_file()  # refused: nothing deleted
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    lease = store.try_claim(2)  # the kernel released the flock with the process: no stale lock
    assert lease is not None
    lease.release()
    assert store.missing_shards() == [0, 1, 2, 3]
