"""The shipped demo_data/: readable by the data layer, real LIBERO instructions, actions like the IPEC data.

No simulator needed: these read the committed files only (rendering is scripts/make_demo_dataset.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from geo3d.data.layout import ACTION_KEY, STATE_KEY
from geo3d.data.mixture import LiberoMixture
from geo3d.data.norm_stats import Normalizer, compute_norm_stats
from geo3d.data.suites import DEMO_DATA_ROOT

FOLDERS = ["libero_spatial_no_noops_1.0.0_lerobot", "libero_object_no_noops_1.0.0_lerobot"]
# The benchmark's task language of the two suites (LIBERO's bddl files), independent of generation.json.
BENCHMARK_INSTRUCTIONS = {
    "libero_spatial": [f"pick up the black bowl {where} and place it on the plate" for where in (
        "between the plate and the ramekin", "next to the ramekin", "from table center", "on the cookie box",
        "in the top drawer of the wooden cabinet", "on the ramekin", "next to the cookie box", "on the stove",
        "next to the plate", "on the wooden cabinet")],
    "libero_object": [f"pick up the {obj} and place it in the basket" for obj in (
        "alphabet soup", "cream cheese", "salad dressing", "bbq sauce", "ketchup", "tomato sauce", "butter",
        "milk", "chocolate pudding", "orange juice")],
}
MAX_STEP_CHANGE = 0.15 + 1e-6  # the generator's rate limit on translation actions


@pytest.fixture(scope="module")
def mix():
    m = LiberoMixture("demo", image_size=None)
    yield m
    m.close()


@pytest.fixture(scope="module")
def generation():
    return json.loads((DEMO_DATA_ROOT / "generation.json").read_text())


def test_two_datasets_in_suite_order(mix):
    assert [p.name for p in mix.paths] == FOLDERS
    assert all(ds.num_episodes >= 2 for ds in mix.datasets)


def test_instructions_are_the_benchmarks(mix, generation):
    by_suite = {m["suite"]: [] for m in generation["episodes"]}
    for m in generation["episodes"]:
        by_suite[m["suite"]].append(m)
    for ds, suite in zip(mix.datasets, ("libero_spatial", "libero_object")):
        metas = by_suite[suite]
        assert ds.num_episodes == len(metas)
        for m in metas:
            assert m["instruction"] == BENCHMARK_INSTRUCTIONS[suite][m["task_id"]]
            cols = ds.episode_columns(m["episode_index"])
            texts = {ds.task_text(t) for t in np.unique(cols["task_index"])}
            assert texts == {m["instruction"]}
            assert len(cols[ACTION_KEY]) == m["length"]


def test_actions_bounded_smooth_and_gripper_binary(mix):
    moving = 0
    for ds in mix.datasets:
        for e in ds.episode_indices:
            a = ds.episode_columns(e)[ACTION_KEY].astype(np.float64)
            assert a.shape[1] == 7 and np.all(np.abs(a) <= 1.0)
            assert set(np.unique(a[:, 6])) <= {-1.0, 1.0}
            assert {-1.0, 1.0} <= set(np.unique(a[:, 6])), "every episode closes and opens the gripper"
            assert np.abs(np.diff(a[:, :3], axis=0)).max() <= MAX_STEP_CHANGE
            assert np.allclose(a[:, 3:6], 0.0)
            moving += int((np.abs(a[:, :3]).max(1) > 0.1).sum())
            s = ds.episode_columns(e)[STATE_KEY]
            assert s.shape[1] == 8 and np.isfinite(s).all()
            # purposeful motion: the end effector travels well over 10 cm in every episode
            assert np.linalg.norm(np.diff(s[:, :3], axis=0), axis=1).sum() > 0.10
    assert moving > 0.5 * len(mix)


def test_frame_counts_match_info_and_episodes(mix):
    for ds, path in zip(mix.datasets, mix.paths):
        info = json.loads((path / "meta" / "info.json").read_text())
        assert info["codebase_version"] == "v2.0" and info["fps"] == 20
        lengths = [ds.episode(e).length for e in ds.episode_indices]
        assert info["total_frames"] == sum(lengths) == len(ds.read_columns([ACTION_KEY])[ACTION_KEY])
        assert info["total_episodes"] == len(lengths)
    assert len(mix) == sum(s.length for s in mix.episodes())


def test_images_decode_at_256_and_are_not_blank(mix):
    for d in range(len(mix.datasets)):
        span = mix.episodes()[[s.dataset_id for s in mix.episodes()].index(d)]
        first = last = None
        count = 0
        for frames, _ in mix.iter_episode(d, span.episode_index):
            assert frames.shape == (2, 256, 256, 3) and frames.dtype == np.uint8
            first = frames if first is None else first
            last, count = frames, count + 1
        assert count == span.length
        assert first.std() > 10, "a rendered scene, not a flat image"
        # the arm moved: the wrist camera sees something else at the end of the episode
        assert np.abs(first[1].astype(int) - last[1].astype(int)).mean() > 5
        item = mix[span.start + span.length // 2]
        assert item["images"].shape == (2, 256, 256, 3)


def test_norm_stats_compute(mix):
    stats = compute_norm_stats(mix)
    assert stats["num_frames"] == len(mix)
    norm = Normalizer(stats, "action", "min_max", raw_dims=(6,))
    a = mix.datasets[0].episode_columns(0)[ACTION_KEY]
    np.testing.assert_allclose(norm.unnormalize(norm.normalize(a)), a, atol=1e-5)


def test_generation_record_matches_folders(generation):
    sizes = 0
    for d in generation["datasets"]:
        folder = DEMO_DATA_ROOT / d["folder"]
        assert json.loads((folder / "meta" / "info.json").read_text())["total_frames"] == d["frames"]
        sizes += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert sizes < 15e6
    assert generation["success"]["count"] == sum(m["success"] for m in generation["episodes"])
