"""Exact norm stats over all frames vs brute force; normalizer round trip; meta/stats.json comparison."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from geo3d.core.errors import DataError
from geo3d.data.mixture import LiberoMixture
from geo3d.data.norm_stats import (
    Normalizer,
    compare_with_meta_stats,
    compute_norm_stats,
    load_norm_stats,
    save_norm_stats,
)
from geo3d.data.suites import SUITE_FOLDERS

from data_fixtures import make_synthetic_libero, synthetic_sources

SPEC = dict(suites=("libero_spatial", "libero_object"), episodes_per_suite=3, lengths=(9, 30, 4), size=64, seed=5)


@pytest.fixture(scope="module", params=["v2.0", "v3.0"])
def root(request, tmp_path_factory):
    return make_synthetic_libero(tmp_path_factory.mktemp(request.param), version=request.param, **SPEC)


@pytest.fixture(scope="module")
def brute():
    eps = [ep for eps in synthetic_sources(**SPEC).values() for ep in eps]
    return {"action": np.concatenate([e.action for e in eps]).astype(np.float64),
            "state": np.concatenate([e.state for e in eps]).astype(np.float64)}


def test_exact_stats_match_brute_force(root, brute):
    stats = compute_norm_stats(LiberoMixture("demo", root))
    assert stats["num_frames"] == 2 * (9 + 30 + 4)
    for key, x in brute.items():
        expect = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0),
                  "q01": np.quantile(x, 0.01, axis=0), "q99": np.quantile(x, 0.99, axis=0)}
        for name, value in expect.items():
            np.testing.assert_allclose(stats[key][name], value, rtol=1e-12, atol=1e-15, err_msg=f"{key}.{name}")
    # per-episode quantiles averaged (the bug class this avoids) would be measurably different here
    per_episode_q99 = np.mean([np.quantile(e.action, 0.99, axis=0)
                               for eps in synthetic_sources(**SPEC).values() for e in eps], axis=0)
    assert np.abs(per_episode_q99 - np.asarray(stats["action"]["q99"])).max() > 1e-3


def test_save_load_round_trip(root, tmp_path):
    stats = compute_norm_stats(LiberoMixture("demo", root))
    path = save_norm_stats(stats, tmp_path / "run" / "norm_stats.json")
    assert load_norm_stats(path) == json.loads(json.dumps(stats))
    path.write_text("{broken")
    with pytest.raises(DataError, match="corrupt"):
        load_norm_stats(path)
    with pytest.raises(DataError, match="missing"):
        load_norm_stats(tmp_path / "nope.json")
    path.write_text('{"action": {"min": [0]}}')
    with pytest.raises(DataError, match="recompute"):
        load_norm_stats(path)


def test_normalizer_range_round_trip_and_raw_gripper(root, brute):
    stats = compute_norm_stats(LiberoMixture("demo", root))
    norm = Normalizer(stats, "action", "min_max", raw_dims=(6,))
    a = brute["action"].astype(np.float32)
    z = norm.normalize(a)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z[:, :6].min(0), -1.0, atol=1e-6)
    np.testing.assert_allclose(z[:, :6].max(0), 1.0, atol=1e-6)
    np.testing.assert_array_equal(z[:, 6], a[:, 6])  # gripper stays raw
    np.testing.assert_allclose(norm.unnormalize(z), a, atol=1e-6)


def test_normalizer_constant_dim_and_torch():
    stats = {"action": {"min": [0.0, 2.0, -1.0], "max": [4.0, 2.0, 1.0]}}
    norm = Normalizer(stats, "action", "min_max", raw_dims=(2,))
    a = np.array([[0.0, 2.0, -1.0], [4.0, 2.0, 1.0], [1.0, 2.0, 1.0]], np.float64)
    z = norm.normalize(a)
    np.testing.assert_array_equal(z, [[-1.0, 0.0, -1.0], [1.0, 0.0, 1.0], [-0.5, 0.0, 1.0]])
    np.testing.assert_array_equal(norm.unnormalize(z), a)  # exact on the constant dim too
    noisy = z + np.array([0.0, 0.07, 0.0])  # a policy's residual noise on the constant dim: still the constant
    np.testing.assert_array_equal(norm.unnormalize(noisy), a)
    t = torch.tensor(a, dtype=torch.float32)
    np.testing.assert_allclose(norm.normalize(t).numpy(), z, atol=1e-7)
    np.testing.assert_allclose(norm.unnormalize(norm.normalize(t)).numpy(), a, atol=1e-6)


def test_compare_with_meta_stats(root, tmp_path):
    m = LiberoMixture("demo", root)
    stats = compute_norm_stats(m)
    report = compare_with_meta_stats(stats, m)
    assert report["missing"] == [] and len(report["compared"]) == 2
    for key in ("action", "state"):
        for name in ("min", "max", "mean", "std"):
            assert report["max_abs_diff"][key][name] < 1e-6
    copy = shutil.copytree(root, tmp_path / "copy")
    (copy / SUITE_FOLDERS["libero_object"] / "meta/stats.json").unlink()
    partial = compare_with_meta_stats(stats, LiberoMixture("demo", copy))
    assert partial["missing"] == [SUITE_FOLDERS["libero_object"]] and partial["max_abs_diff"] == {}
