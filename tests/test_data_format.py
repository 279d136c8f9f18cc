"""Reading LeRobot v2.0 / v2.1 / v3.0 folders written by our writer: same content every way."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_fixtures import make_synthetic_libero, synthetic_sources

from geo3d.data.lerobot_layout import ACTION_KEY, CAMERA_KEYS, STATE_KEY
from geo3d.data.lerobot_format import LeRobotDataset
from geo3d.data.suites import SUITE_FOLDERS
from geo3d.data.lerobot_writer import write_lerobot_dataset
from geo3d.core.errors import DataError

LENGTHS = (7, 12, 9)  # uneven, odd lengths: v3.0 episode boundaries fall mid-GOP
SPEC = dict(suites=("libero_spatial",), episodes_per_suite=3, lengths=LENGTHS, size=64, seed=3)
FOLDER = SUITE_FOLDERS["libero_spatial"]


@pytest.fixture(scope="module")
def sources():
    return synthetic_sources(**SPEC)["libero_spatial"]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """version -> dataset folder, for v2.0, v2.1, v3.0 (one file) and v3.0 split over two files."""
    out = {}
    for name, version, extra in (("v2.0", "v2.0", {}), ("v2.1", "v2.1", {}), ("v3.0", "v3.0", {}),
                                 ("v3.0-split", "v3.0", {"episodes_per_file": 2})):
        root = make_synthetic_libero(tmp_path_factory.mktemp(name), version=version, **SPEC, **extra)
        out[name] = root / FOLDER
    return out


@pytest.mark.parametrize("name", ["v2.0", "v2.1", "v3.0", "v3.0-split"])
def test_reads_every_version_with_source_content(written, sources, name):
    ds = LeRobotDataset(written[name])
    assert ds.codebase_version == name.split("-")[0]
    assert ds.fps == 20 and ds.num_episodes == 3 and ds.num_frames == sum(LENGTHS)
    assert ds.episode_indices == [0, 1, 2]
    for e, src in enumerate(sources):
        cols = ds.episode_columns(e)
        np.testing.assert_array_equal(cols[STATE_KEY], src.state)  # parquet is lossless
        np.testing.assert_array_equal(cols[ACTION_KEY], src.action)
        np.testing.assert_array_equal(cols["frame_index"], np.arange(len(src)))
        assert ds.task_text(cols["task_index"][0]) == src.task
        frames = np.stack(list(ds.iter_episode_frames(e)))
        assert frames.shape == (len(src), 2, 64, 64, 3) and frames.dtype == np.uint8
        for v, stored in enumerate((src.agentview, src.wrist)):  # AV1 is lossy: close, not equal
            err = np.abs(frames[:, v].astype(int) - stored.astype(int)).mean()
            assert err < 6.0, (name, e, v, err)
            # and every decoded frame is nearest to its own source frame (no off-by-one in time)
            dist = np.abs(frames[:, None, v].astype(int) - stored[None].astype(int)).mean(axis=(2, 3, 4))
            np.testing.assert_array_equal(dist.argmin(1), np.arange(len(src)))


def test_all_versions_decode_to_the_same_columns(written):
    a, b = LeRobotDataset(written["v2.0"]), LeRobotDataset(written["v3.0-split"])
    for col in (STATE_KEY, ACTION_KEY, "task_index", "episode_index", "index", "frame_index"):
        np.testing.assert_array_equal(a.read_columns([col])[col], b.read_columns([col])[col])
    assert a.tasks == b.tasks


def test_v2_layout_matches_lerobot(written):
    root = written["v2.0"]
    info = json.loads((root / "meta/info.json").read_text())
    assert info["data_path"] == "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
    assert info["video_path"] == "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
    assert info["total_episodes"] == 3 and info["total_frames"] == sum(LENGTHS) and info["total_videos"] == 6
    for key in CAMERA_KEYS:
        assert info["features"][key]["info"]["video.codec"] == "av1"
        assert (root / f"videos/chunk-000/{key}/episode_000002.mp4").is_file()
    schema = pq.read_schema(root / "data/chunk-000/episode_000001.parquet")
    assert schema.field(STATE_KEY).type == pa.list_(pa.float32(), 8)
    assert schema.field(ACTION_KEY).type == pa.list_(pa.float32(), 7)
    index = pq.read_table(root / "data/chunk-000/episode_000001.parquet").column("index").to_pylist()
    assert index == list(range(LENGTHS[0], LENGTHS[0] + LENGTHS[1]))  # global, contiguous
    assert [json.loads(x)["length"] for x in (root / "meta/episodes.jsonl").read_text().splitlines()] == list(LENGTHS)
    assert not (root / "meta/episodes_stats.jsonl").exists()
    assert (written["v2.1"] / "meta/episodes_stats.jsonl").read_text().count("\n") == 3


def test_v3_layout_matches_lerobot(written):
    root = written["v3.0-split"]
    info = json.loads((root / "meta/info.json").read_text())
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [(r["data/file_index"], r["dataset_from_index"], r["dataset_to_index"]) for r in eps] == \
        [(0, 0, 7), (0, 7, 19), (1, 19, 28)]
    key = CAMERA_KEYS[0]
    assert [(r[f"videos/{key}/from_timestamp"], r[f"videos/{key}/to_timestamp"]) for r in eps] == \
        [(0.0, 0.35), (0.35, 0.95), (0.0, 0.45)]
    assert (root / f"videos/{key}/chunk-000/file-001.mp4").is_file()
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert set(tasks.column_names) == {"task_index", "task"}


def test_writer_refuses_to_overwrite(tmp_path, sources):
    target = tmp_path / "ds"
    write_lerobot_dataset(target, sources[:1])
    before = sorted(p.relative_to(target) for p in target.rglob("*"))
    with pytest.raises(DataError, match="already exists"):
        write_lerobot_dataset(target, sources[1:2])
    assert sorted(p.relative_to(target) for p in target.rglob("*")) == before
    assert LeRobotDataset(target).num_frames == LENGTHS[0]
    write_lerobot_dataset(target, sources[1:2], overwrite=True)
    assert LeRobotDataset(target).num_frames == LENGTHS[1]
    assert not list(tmp_path.glob(".ds.tmp-*"))


def test_writer_rejects_bad_arrays(tmp_path, sources):
    bad = synthetic_sources(**SPEC)["libero_spatial"][0]
    bad.action = bad.action[:, :6]
    with pytest.raises(DataError, match="action must be"):
        write_lerobot_dataset(tmp_path / "x", [bad])
    assert not (tmp_path / "x").exists()


def test_meta_stats_json_describes_the_source(written, sources):
    stats = json.loads((written["v2.0"] / "meta/stats.json").read_text())
    agent = np.concatenate([s.agentview for s in sources]).reshape(-1, 3) / 255.0
    np.testing.assert_allclose(np.ravel(stats[CAMERA_KEYS[0]]["mean"]), agent.mean(0), rtol=1e-9)
    np.testing.assert_allclose(np.ravel(stats[CAMERA_KEYS[0]]["std"]), agent.std(0), rtol=1e-6)
    actions = np.concatenate([s.action for s in sources]).astype(np.float64)
    np.testing.assert_allclose(stats[ACTION_KEY]["max"], actions.max(0))
    assert set(stats[ACTION_KEY]) == {"min", "max", "mean", "std"}  # v2.x: no quantiles
    v3 = json.loads((written["v3.0"] / "meta/stats.json").read_text())
    assert {"q01", "q99", "count"} <= set(v3[STATE_KEY])
