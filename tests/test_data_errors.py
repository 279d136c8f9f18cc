"""Bad data on disk gives a DataError that names the file and says what to do."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from data_fixtures import make_synthetic_libero, synthetic_sources

from geo3d.data.lerobot_layout import AGENTVIEW_KEY
from geo3d.data.lerobot_format import LeRobotDataset
from geo3d.data.mixture import LiberoMixture
from geo3d.data.suites import SUITE_FOLDERS, VALID_SUITES, resolve_suite
from geo3d.data.video_decode import encode_av1
from geo3d.core.errors import DataError, Geo3dError

SPEC = dict(suites=("libero_spatial", "libero_object"), episodes_per_suite=2, length=10, size=64, seed=1)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_synthetic_libero(tmp_path_factory.mktemp("pristine"), **SPEC)


@pytest.fixture()
def root(pristine, tmp_path):
    """A private copy each test may damage."""
    return shutil.copytree(pristine, tmp_path / "data")


def test_missing_suite_folder_names_the_path(root):
    shutil.rmtree(root / SUITE_FOLDERS["libero_object"])
    with pytest.raises(DataError) as e:
        LiberoMixture("demo", root)
    msg = str(e.value)
    assert str(root / SUITE_FOLDERS["libero_object"]) in msg and "does not exist" in msg
    assert "--data-root" in msg and "GEO3D_DATA_ROOT" in msg
    with pytest.raises(DataError, match="libero_goal_no_noops_1.0.0_lerobot"):
        resolve_suite("libero_all", root)
    assert isinstance(e.value, Geo3dError)


def test_suite_without_data_root_says_how_to_set_it(monkeypatch):
    monkeypatch.delenv("GEO3D_DATA_ROOT", raising=False)
    with pytest.raises(DataError, match="--data-root"):
        resolve_suite("libero_10")


def test_unknown_suite_lists_valid_ones(root):
    with pytest.raises(DataError) as e:
        LiberoMixture("libero_100", root)
    assert "libero_100" in str(e.value)
    for name in VALID_SUITES:
        assert name in str(e.value)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"codebase_version": "v2.0"}'])
def test_corrupt_info_json(root, content):
    info = root / SUITE_FOLDERS["libero_spatial"] / "meta/info.json"
    info.write_text(content)
    with pytest.raises(DataError, match="info.json is corrupt") as e:
        LiberoMixture("demo", root)
    assert str(info) in str(e.value)


def test_missing_info_json_and_unsupported_version(root):
    ds = root / SUITE_FOLDERS["libero_spatial"]
    text = (ds / "meta/info.json").read_text()
    (ds / "meta/info.json").write_text(text.replace('"v2.0"', '"v1.6"'))
    with pytest.raises(DataError, match="'v1.6' is not supported"):
        LeRobotDataset(ds)
    (ds / "meta/info.json").unlink()
    with pytest.raises(DataError, match="info.json is missing"):
        LeRobotDataset(ds)


def test_video_with_fewer_frames_than_parquet_rows(root):
    ds = root / SUITE_FOLDERS["libero_object"]
    video = ds / f"videos/chunk-000/{AGENTVIEW_KEY}/episode_000001.mp4"
    frames = synthetic_sources(**SPEC)["libero_object"][1].agentview
    video.unlink()
    encode_av1(video, [frames[:7]], fps=20)  # 7 frames for 10 parquet rows
    m = LiberoMixture("demo", root, image_size=None)
    with pytest.raises(DataError) as e:
        for _ in m.iter_episode(1, 1):
            pass
    assert str(video) in str(e.value) and "has 7 frames" in str(e.value) and "10 rows" in str(e.value)
    np.testing.assert_array_equal(m[m.global_index(1, 1, 6)]["frame_index"], 6)  # frames present still read
    with pytest.raises(DataError, match="has 7 frames for episode 1 but its parquet has 10 rows") as e:
        m[m.global_index(1, 1, 8)]
    assert str(video) in str(e.value)


def test_parquet_rows_disagreeing_with_metadata(root):
    ds = root / SUITE_FOLDERS["libero_spatial"]
    episodes = ds / "meta/episodes.jsonl"
    episodes.write_text(episodes.read_text().replace('"length": 10', '"length": 12', 1))
    (ds / "meta/info.json").write_text((ds / "meta/info.json").read_text().replace('"total_frames": 20',
                                                                                  '"total_frames": 22'))
    m = LiberoMixture("libero_spatial", root)
    with pytest.raises(DataError, match="has 10 rows for episode 0 but the metadata says length 12"):
        m[0]


def test_total_frames_mismatch(root):
    ds = root / SUITE_FOLDERS["libero_spatial"]
    (ds / "meta/info.json").write_text((ds / "meta/info.json").read_text().replace('"total_frames": 20',
                                                                                  '"total_frames": 21'))
    with pytest.raises(DataError, match="total_frames=21"):
        LeRobotDataset(ds)


def test_v3_video_with_fewer_frames_than_parquet_rows(tmp_path):
    root = make_synthetic_libero(tmp_path, version="v3.0", **SPEC)
    ds = root / SUITE_FOLDERS["libero_spatial"]
    video = ds / f"videos/{AGENTVIEW_KEY}/chunk-000/file-000.mp4"
    eps = synthetic_sources(**SPEC)["libero_spatial"]
    video.unlink()
    encode_av1(video, [eps[0].agentview, eps[1].agentview[:4]], fps=20)  # episode 1: 4 of 10 frames
    m = LiberoMixture("libero_spatial", root, image_size=None)
    assert len(list(m.iter_episode(0, 0))) == 10
    with pytest.raises(DataError, match="has 4 frames for episode 1 but its parquet has 10 rows") as e:
        list(m.iter_episode(0, 1))
    assert str(video) in str(e.value)
    with pytest.raises(DataError, match="ends before frame 6 of episode 1"):
        m[m.global_index(0, 1, 6)]
