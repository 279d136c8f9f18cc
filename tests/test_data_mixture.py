"""The global frame index, chunk padding, and random access == sequential decoding."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from geo3d.core.config import load_config
from geo3d.data.dataset_base import frame_content_id
from geo3d.data.mixture import LiberoMixture
from geo3d.data.suites import SUITE_FOLDERS, resolve_suite
from geo3d.data.transforms import RAW_RENDER, UPRIGHT, resize, to_model_images, turn_180
from geo3d.data.video_decode import VideoFile

from data_fixtures import make_synthetic_libero, synthetic_sources

LENGTHS = (5, 11)  # episode 0 shorter than the action horizon
SPEC = dict(suites=("libero_spatial", "libero_object"), episodes_per_suite=2, lengths=LENGTHS, size=64, seed=7)
TOTAL = 2 * sum(LENGTHS)


@pytest.fixture(scope="module", params=["v2.0", "v3.0"])
def root(request, tmp_path_factory):
    return make_synthetic_libero(tmp_path_factory.mktemp(request.param), version=request.param, **SPEC)


@pytest.fixture(scope="module")
def sources():
    return synthetic_sources(**SPEC)


def test_global_index_order(root):
    m = LiberoMixture("demo", root, image_size=None)
    assert len(m) == TOTAL
    spans = m.episodes()
    assert [(s.dataset_id, s.episode_index, s.start, s.length) for s in spans] == \
        [(0, 0, 0, 5), (0, 1, 5, 11), (1, 0, 16, 5), (1, 1, 21, 11)]
    expect = [(s.dataset_id, s.episode_index, f) for s in spans for f in range(s.length)]
    assert [m.locate(i) for i in range(len(m))] == expect
    assert list(zip(m.dataset_id.tolist(), m.episode_index.tolist(), m.frame_index.tolist())) == expect
    assert m.global_index(1, 1, 3) == 24 and m.locate(-1) == (1, 1, 10)
    with pytest.raises(IndexError):
        m[TOTAL]
    ident = json.loads(json.dumps(m.identity()))
    assert ident["num_frames"] == TOTAL and ident["suite"] == "demo"
    assert [d["name"] for d in ident["datasets"]] == [SUITE_FOLDERS["libero_spatial"], SUITE_FOLDERS["libero_object"]]


def test_chunk_padding_repeats_last_action_within_the_episode(root, sources):
    m = LiberoMixture("demo", root, image_size=None, action_horizon=8)
    src = sources["libero_spatial"][1].action  # last episode of dataset 0; dataset 1 follows it globally
    item = m[m.global_index(0, 1, 8)]  # 3 real steps left (8, 9, 10)
    np.testing.assert_array_equal(item["actions"][:3], src[8:11])
    np.testing.assert_array_equal(item["actions"][3:], np.repeat(src[10:11], 5, 0))
    assert item["action_pad"].tolist() == [False] * 3 + [True] * 5
    short = m[m.global_index(1, 0, 0)]  # episode of 5 frames < horizon 8
    np.testing.assert_array_equal(short["actions"][:5], sources["libero_object"][0].action)
    assert short["action_pad"].tolist() == [False] * 5 + [True] * 3
    mid = m[m.global_index(1, 1, 2)]
    np.testing.assert_array_equal(mid["actions"], sources["libero_object"][1].action[2:10])
    assert not mid["action_pad"].any()
    assert mid["actions"].dtype == np.float32 and mid["actions"].shape == (8, 7)
    np.testing.assert_array_equal(mid["state"], sources["libero_object"][1].state[2])
    assert mid["instruction"] == sources["libero_object"][1].task
    assert (mid["dataset_id"], mid["episode_index"], mid["frame_index"], mid["global_index"]) == (1, 1, 2, 23)


def test_random_access_equals_sequential_decode(root):
    m = LiberoMixture("demo", root, image_size=None, video_cache_size=2)
    seq, ids = {}, {}
    for s in m.episodes():
        for f, (frames, cid) in enumerate(m.iter_episode(s.dataset_id, s.episode_index)):
            seq[s.start + f], ids[s.start + f] = frames, cid
    assert len(seq) == TOTAL and len(set(ids.values())) == TOTAL  # every frame's content differs
    for i in np.random.default_rng(0).permutation(TOTAL).tolist() + list(range(TOTAL)):
        stored = m.read_stored_frames(i)
        np.testing.assert_array_equal(stored, seq[i])  # bit-identical pixels
        assert frame_content_id(stored) == ids[i]
        np.testing.assert_array_equal(m[i]["images"], seq[i])  # LeRobot frames are stored upright: unturned


def test_images_are_upright_and_resized(root):
    m = LiberoMixture("demo", root, image_size=32)
    item = m[3]
    assert item["images"].shape == (2, 32, 32, 3) and item["images"].dtype == np.uint8
    np.testing.assert_array_equal(item["images"], resize(m.read_stored_frames(3), 32))
    assert m.frame_orientation(0) == UPRIGHT


def test_orientations_and_resize():
    img = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    np.testing.assert_array_equal(turn_180(img), np.rot90(img, 2))
    pair = np.stack([img, img + 1])
    turned = np.stack([np.rot90(img, 2), np.rot90(img + 1, 2)])
    np.testing.assert_array_equal(to_model_images(pair, None, RAW_RENDER), turned)
    np.testing.assert_array_equal(to_model_images(pair, None, UPRIGHT), pair)
    with pytest.raises(ValueError, match="unknown frame orientation"):
        to_model_images(pair, None, "rot180")
    flat = np.full((2, 64, 64, 3), 77, np.uint8)
    out = resize(flat, 28)
    assert out.shape == (2, 28, 28, 3) and (out == 77).all()
    assert resize(flat, None) is flat and resize(flat, 64) is flat


def test_dataloader_workers_and_pickling(root):
    m = LiberoMixture("demo", root, image_size=32)
    direct = [m[i] for i in range(TOTAL)]  # opens containers and caches tables before pickling
    clone = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(clone[5]["images"], direct[5]["images"])
    loader = torch.utils.data.DataLoader(m, batch_size=6, num_workers=2, shuffle=False)
    got = [b for b in loader]
    images = torch.cat([b["images"] for b in got]).numpy()
    np.testing.assert_array_equal(images, np.stack([d["images"] for d in direct]))
    assert sum((b["instruction"] for b in got), []) == [d["instruction"] for d in direct]


def test_suite_resolution(tmp_path, monkeypatch):
    folders = [tmp_path / SUITE_FOLDERS[s] for s in ("libero_spatial", "libero_object", "libero_goal", "libero_10")]
    for f in folders:
        (f / "meta").mkdir(parents=True)
    assert resolve_suite("libero_all", tmp_path) == folders
    assert resolve_suite("demo", tmp_path) == folders[:2]
    assert resolve_suite("libero_goal", tmp_path) == [folders[2]]
    monkeypatch.setenv("GEO3D_DATA_ROOT", str(tmp_path))
    assert resolve_suite("libero_10") == [folders[3]]


def _decoder_threads() -> int:
    tasks = os.listdir("/proc/self/task")
    return sum(open(f"/proc/self/task/{t}/comm").read().strip() == "dav1d-worker" for t in tasks)


def test_no_decoder_threads_outlive_decoding(root):
    """A process that later forks DataLoader workers must not hold libdav1d threads (children deadlock)."""
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("needs Linux /proc")
    m = LiberoMixture("demo", root, image_size=None)
    for _ in m.iter_episode(0, 1):
        pass
    partial = m.iter_episode(1, 1)
    next(partial)
    assert _decoder_threads() > 0  # mid-decode they exist, so the final check can see them (not vacuous)
    partial.close()  # abandoned half-way
    m[3], m[20]  # random access keeps files open, single-threaded
    assert _decoder_threads() == 0


def test_caches_stay_bounded_over_an_epoch(root):
    m = LiberoMixture("demo", root, image_size=None, video_cache_size=2)
    for ds in m.datasets:
        ds._table_cache_size = 1
    for i in np.random.default_rng(1).permutation(TOTAL):
        m.read_stored_frames(int(i))
        m.action_chunk(*m.locate(int(i)))
        for ds in m.datasets:
            assert len(ds._videos._files) <= 2 and len(ds._tables) <= 1


def test_from_config_uses_data_keys(root, monkeypatch):
    monkeypatch.delenv("GEO3D_DATA_ROOT", raising=False)
    cfg = load_config(["data"], [f"data.data_root={root}", "data.action_horizon=4", "data.image_size=28"])
    m = LiberoMixture.from_config(cfg)
    item = m[0]
    assert len(m) == TOTAL and item["actions"].shape == (4, 7) and item["images"].shape == (2, 28, 28, 3)
    monkeypatch.setenv("GEO3D_DATA_ROOT", str(root))
    assert len(LiberoMixture.from_config(load_config(["data"], ["data.suite=libero_object"]))) == sum(LENGTHS)


def test_random_access_recovers_when_a_seek_lands_past_the_frame(root, monkeypatch):
    """Some files seek to a keyframe after the wanted time; the reader must step back, not skip frames."""
    m = LiberoMixture("demo", root, image_size=None)
    expect = {i: m.read_stored_frames(i) for i in (9, 14, 25)}
    m.close()
    real_seek = VideoFile._seek
    monkeypatch.setattr(VideoFile, "_seek", lambda self, t: real_seek(self, t + 0.2 if t > 0 else t))
    for i, frames in expect.items():
        np.testing.assert_array_equal(m.read_stored_frames(i), frames)
