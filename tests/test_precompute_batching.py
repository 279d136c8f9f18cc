"""Batches are filled across store shards: `precompute.batch_size` frames per encoder call even when a batch spans
several shards, one owner per shard, and the store is bit-identical to one encoded shard by shard.
In-process precompute runs (the real worker: decode, planner, leases, writer) on a small synthetic dataset."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

import geo3d.core.preemption as preemption
import geo3d.precompute.run as precompute_run
from geo3d.core.config import ConfigError
from geo3d.data.mixture import LiberoMixture
from geo3d.features_store import FeatureStore
from geo3d.features_store.store import open_arrays
from geo3d.precompute.cli import precompute_config
from geo3d.precompute.decode import DataSource, decode_episode
from geo3d.precompute.run import _note_other_device, run_precompute

from data_fixtures import make_synthetic_libero

SHARD = 8
FRAMES = 2 * (45 + 30 + 55)  # 260: 32 full shards + a 4-frame last shard
SMALL = ["data.image_size=56", "encoder.tokens_per_view=4", "encoder.tiny.width=32", "encoder.tiny.heads=2",
         "encoder.tiny.out_dim=16", f"store.shard_frames={SHARD}", "precompute.decode_workers=0",
         "precompute.device=cpu"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_synthetic_libero(tmp_path_factory.mktemp("libero"), suites=("libero_spatial", "libero_object"),
                                 episodes_per_suite=3, lengths=[45, 30, 55], size=64)


def _precompute(data_root: Path, store: Path, *overrides: str, calls: list[int] | None = None) -> tuple[list[int], object]:
    """Run one in-process worker; returns the row count of every encoder call and the run's result."""
    calls = [] if calls is None else calls
    real_build = precompute_run.build_encoder

    def build(*a, **k):
        enc = real_build(*a, **k)
        real_encode = enc.encode_taps  # every tap of a batch from one call
        enc.encode_taps = lambda x, taps: (calls.append(len(x)), real_encode(x, taps))[1]
        return enc

    cfg = precompute_config([
        "data.suite=demo", f"data.data_root={data_root}", f"precompute.store={store}", *SMALL, *overrides])
    with mock.patch.object(precompute_run, "build_encoder", build):
        result = run_precompute(cfg)
    return calls, result


def _arrays(store: Path) -> dict[str, np.ndarray]:
    return {k: np.asarray(a[:]) for k, a in open_arrays(store).items()}


def _markers(store: Path) -> dict[int, dict]:
    return {int(p.name[6:12]): json.loads(p.read_text()) for p in (store / "commits").glob("*.json")}


@pytest.fixture(scope="module")
def per_shard(data_root, tmp_path_factory) -> Path:
    """The reference: batch_size = shard size, so no batch ever crosses a shard."""
    store = tmp_path_factory.mktemp("ref") / "store.zarr"
    calls, result = _precompute(data_root, store, f"precompute.batch_size={SHARD}")
    assert result.store_complete and sum(calls) == FRAMES and set(calls) == {SHARD, FRAMES % SHARD}
    return store


@pytest.mark.parametrize("batch, full", [(24, "false"), (24, "true"), (20, "auto")])
def test_encoder_sees_full_batches_across_shards_and_the_store_is_bit_identical(data_root, per_shard, tmp_path,
                                                                                 batch, full):
    store = tmp_path / "store.zarr"
    calls, result = _precompute(data_root, store, f"precompute.batch_size={batch}", f"precompute.full_batches={full}")
    pad = full == "true"  # auto = only on CUDA
    assert result.store_complete and result.frames == FRAMES and sorted(result.shards) == list(range(33))
    # every call but the last holds `batch` frames, spanning 3 shards of 8; the last is the rest (or padded)
    rest = FRAMES - batch * (FRAMES // batch)
    assert calls == [batch] * (FRAMES // batch) + ([batch if pad else rest] if rest else [])
    mine, ref = _arrays(store), _arrays(per_shard)
    assert mine.keys() == ref.keys() and all(np.array_equal(mine[k], ref[k]) for k in ref)
    markers, ref_markers = _markers(store), _markers(per_shard)
    assert {i: m["index_digest"] for i, m in markers.items()} == {i: m["index_digest"] for i, m in ref_markers.items()}
    writer = markers[0]["writer"]  # how each shard was made is recorded with it
    assert writer["batch_size"] == batch and writer["full_batches"] is pad
    assert writer["runtime"]["device_type"] == "cpu" and writer["runtime"]["torch"]


def test_batch_larger_than_several_shards_and_a_bad_setting(data_root, per_shard, tmp_path):

    store = tmp_path / "store.zarr"
    calls, result = _precompute(data_root, store, "precompute.batch_size=100", "precompute.writer_threads=2")
    assert calls == [100, 100, 60] and result.store_complete  # up to 14 shards in flight per batch
    ref = _arrays(per_shard)
    assert all(np.array_equal(a, ref[k]) for k, a in _arrays(store).items())
    with pytest.raises(ConfigError, match=r"precompute.full_batches must be true or false or one of \['auto'\]"):
        _precompute(data_root, tmp_path / "other.zarr", "precompute.full_batches=sometimes")
    assert not (tmp_path / "other.zarr").exists()  # refused before anything was made


@pytest.mark.parametrize("grace, done, dropped", [(0, [0, 1], [2]), (600, [0, 1, 2], [])])
def test_preemption_finishes_or_releases_every_shard_in_flight(data_root, tmp_path, grace, done, dropped):
    """A SIGTERM-like stop after the first batch (shards 0, 1 encoded, 4 frames of shard 2 left): no new shard
    is claimed; shard 2 is finished when that fits the grace period, else released uncommitted; nothing stays
    claimed and a rerun completes the store."""
    store = tmp_path / "store.zarr"
    calls: list[int] = []

    class StopAfterFirstBatch(preemption.PreemptionFlag):  # "a signal arrived" once one batch was encoded
        @property
        def requested(self) -> bool:
            return bool(calls)

    with mock.patch.object(precompute_run, "PreemptionFlag", StopAfterFirstBatch):
        _, result = _precompute(data_root, store, "precompute.batch_size=20", f"precompute.preempt_grace_s={grace}",
                                calls=calls)

    fs = FeatureStore.open(store)
    committed = fs.committed_shards()
    assert calls[0] == 20 and committed == done == sorted(result.shards) and result.dropped == dropped
    assert not set(result.dropped) & set(committed)
    leases = [fs.try_claim(i) for i in result.dropped]
    assert all(lease is not None for lease in leases)  # released: claimable again
    for lease in leases:
        lease.release()
    calls, again = _precompute(data_root, store, "precompute.batch_size=20")
    assert again.store_complete and sum(calls) == FRAMES - 8 * len(committed) + (4 if 32 in committed else 0)


def test_in_process_decoding_of_two_datasets_never_mixes_them(data_root, tmp_path):
    """decode_episode caches one dataset index per (suite, data root, image size): a second dataset decoded in
    the same process (bench, library use, in-process runs) used to be read through the first one's index."""
    other = make_synthetic_libero(tmp_path / "other", suites=("libero_spatial", "libero_object"),
                                  episodes_per_suite=4, lengths=[7, 9, 11, 13], size=64, seed=3)
    for root in (data_root, other, data_root):
        mix = LiberoMixture("demo", root, image_size=56)
        spans = mix.episodes()
        got = decode_episode(DataSource("demo", str(root), 56), spans[-1].dataset_id, spans[-1].episode_index)
        _, first_id = next(iter(mix.iter_episode(spans[-1].dataset_id, spans[-1].episode_index)))
        assert len(got.frames) == spans[-1].length and int(got.content_ids[0]) == int(first_id)


def test_resuming_a_store_made_on_another_device_type_says_so(capsys):
    _note_other_device({"name": "tiny", "runtime": {"device_type": "cuda"}}, {"device_type": "cpu"})
    assert "created on cuda, this worker encodes on cpu" in capsys.readouterr().err
    _note_other_device({"name": "tiny"}, {"device_type": "cpu"})  # a store from before runtimes: nothing to say
    _note_other_device({"name": "tiny", "runtime": {"device_type": "cpu"}}, {"device_type": "cpu"})
    assert capsys.readouterr().err == ""
