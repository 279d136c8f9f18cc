"""Stale shard leases: the owner is recorded, a live owner's lease is never broken, a gone owner's is, and
after the break a worker claims and commits the shard.

A lock that outlives its owner needs a network filesystem whose server keeps a dead client's lock; here a
holder process keeps the flock while its recorded owner is rewritten to what such a lease looks like (a dead
pid on this host, or another host)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from geo3d.features_store import FeatureStore
from geo3d.features_store.leases import _still_linked, owner_record
from geo3d.features_store.testing import make_synthetic_store, write_all_shards

from helpers import run_geo3d


def geo3d_leases(*args: str):
    """`geo3d leases ...` in-process (flock conflicts between open file descriptions, so one process suffices)."""
    return run_geo3d(["leases", *args], expect=None)


@pytest.fixture
def store(tmp_path) -> FeatureStore:
    s = make_synthetic_store(tmp_path / "store", frames=32, shard_frames=8)
    s.mark_damaged([2], reason="test: shard 2 to redo")
    return s


class _hold:
    """Hold shard `shard`'s flock through a second handle; `owner` rewrites the recorded owner (a lease left
    by a dead client)."""

    def __init__(self, store: FeatureStore, shard: int, owner: dict | None) -> None:
        self.lease = FeatureStore.open(store.path).try_claim(shard)
        assert self.lease is not None
        if owner:
            self.lease.path.write_text(json.dumps(owner))

    def kill(self) -> None:
        self.lease.release()

    def wait(self) -> None:
        pass


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_owner_is_recorded(store):
    lease = store.try_claim(2)
    try:
        owner = json.loads(lease.path.read_text())
        assert {"host", "pid", "pid_start", "boot_id", "claimed_utc", "claimed_unix"} <= owner.keys()
        assert owner["pid"] == owner_record()["pid"]
    finally:
        lease.release()


def test_live_owner_is_never_broken(store):
    holder = _hold(store, 2, None)
    try:
        r = geo3d_leases(str(store.path), "--break", "--force", "--older-than-hours", "0")
        assert r.returncode == 1 and "alive on this host" in r.output, r.output
        assert store.try_claim(2) is None
    finally:
        holder.kill()
        holder.wait()


def test_dead_owner_on_this_host_is_broken_then_shard_is_redone(store):
    owner = {**owner_record(), "pid": _dead_pid(), "pid_start": 1}
    holder = _hold(store, 2, owner)  # the flock stays held, as by a server that outlived its client
    try:
        assert store.try_claim(2) is None
        r = geo3d_leases(str(store.path))
        assert r.returncode == 1 and "is not running" in r.output and "see --break" in r.output, r.output
        r = geo3d_leases(str(store.path), "--break")
        assert r.returncode == 0 and "shard 2: BROKEN" in r.output, r.output
        write_all_shards(store)  # a worker now claims and commits the shard
        assert store.missing_shards() == []
    finally:
        holder.kill()
        holder.wait()


def test_other_host_needs_force_and_age(store):
    now = time.time()
    for age_h, force, broken in ((30, False, False), (2, True, False), (30, True, True)):
        owner = {"host": "node-b.cluster", "pid": 4242, "claimed_unix": now - age_h * 3600, "claimed_utc": "x"}
        holder = _hold(store, 2, owner)
        try:
            args = [str(store.path), "--break", "--older-than-hours", "24"] + (["--force"] if force else [])
            r = geo3d_leases(*args)
            assert (r.returncode == 0) == broken, (age_h, force, r.output)
            assert ("BROKEN" in r.output) == broken
        finally:
            holder.kill()
            holder.wait()


def test_claim_of_a_replaced_lock_file_is_refused(store):
    """The inode check: a claimant that opened the lock file before it was broken must not hold the orphan."""
    lock = store.path / "locks" / "shard-000002.lock"
    lock.touch()
    fd = os.open(lock, os.O_RDWR)
    try:
        os.unlink(lock)
        lock.touch()
        assert not _still_linked(fd, Path(lock))
    finally:
        os.close(fd)
