"""verify-cache against a real LeRobot dataset on disk: index consistency, --deep, and the CLI's exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from geo3d.features_store import FeatureStore, StoreLayout, StoreSpec, verify_store
from geo3d.features_store.testing import TINY_ENCODER, synthetic_tokens
from geo3d.data.episode_arrays import EpisodeArrays
from geo3d.data.mixture import LiberoMixture
from geo3d.data.suites import SUITE_FOLDERS
from geo3d.data.lerobot_writer import write_lerobot_dataset
from helpers import REPO, run_geo3d

SUITE = "libero_spatial"
LENGTHS = (10, 14)


def episodes(changed_frame: int | None = None) -> list[EpisodeArrays]:
    """Two small deterministic episodes; `changed_frame` alters one agentview frame of episode 1."""
    out = []
    yy, xx = np.mgrid[0:32, 0:32]
    for e, n in enumerate(LENGTHS):
        view = np.stack([np.stack([(xx * 4 + yy * 2 + 9 * t + 40 * c + 70 * e) % 256 for c in range(3)], -1)
                         for t in range(n)]).astype(np.uint8)
        agent = view.copy()
        if e == 1 and changed_frame is not None:
            agent[changed_frame] = 255 - agent[changed_frame]
        action = np.zeros((n, 7), np.float32)
        out.append(EpisodeArrays(task="put the bowl on the plate", agentview=agent, wrist=view[:, ::-1].copy(),
                                 state=np.zeros((n, 8), np.float32), action=action))
    return out


def write_dataset(root: Path, changed_frame: int | None = None) -> Path:
    write_lerobot_dataset(root / SUITE_FOLDERS[SUITE], episodes(changed_frame))
    return root


def build_store(path: Path, mixture: LiberoMixture, shard_frames: int = 8) -> FeatureStore:
    """What precompute does, with synthetic tokens in place of the encoder."""
    spec = StoreSpec(frames=len(mixture), tokens=4, dim=8, encoder=TINY_ENCODER,
                     preprocessing={"views": ["agentview", "wrist"]}, dataset=mixture.identity(),
                     layout=StoreLayout(shard_frames=shard_frames))
    content = np.zeros(len(mixture), dtype=np.uint64)
    for s in mixture.episodes():
        for j, (_frames, cid) in enumerate(mixture.iter_episode(s.dataset_id, s.episode_index)):
            content[s.start + j] = cid
    store = FeatureStore.open_or_create(path, spec)
    for i in store.missing_shards():
        r = store.shard_range(i)
        sl = slice(r.start, r.stop)
        store.write_shard(i, synthetic_tokens(spec, r), {
            "dataset_id": mixture.dataset_id[sl], "episode_index": mixture.episode_index[sl],
            "frame_index": mixture.frame_index[sl], "content_id": content[sl]}, writer_info={"device": "cpu"})
    return store


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify_ds")
    data = write_dataset(root / "data")
    changed = write_dataset(root / "changed", changed_frame=5)  # episode 1 frame 5 = global frame 15
    build_store(root / "store", LiberoMixture(SUITE, data_root=data))
    return {"root": root, "data": data, "changed": changed, "store": root / "store"}


def test_clean_against_dataset_and_deep(world):
    mixture = LiberoMixture(SUITE, data_root=world["data"])
    report = verify_store(world["store"], mixture=mixture, deep=True, progress=False)
    assert report.ok, report.summary()
    assert set(report.levels) == {"store", "dataset", "deep"} and report.levels["deep"]["frames"] == 24


def test_deep_names_the_changed_source_frame(world):
    mixture = LiberoMixture(SUITE, data_root=world["changed"])
    shallow = verify_store(world["store"], mixture=mixture, progress=False)
    assert shallow.ok  # same counts and indices: only decoding the frames can tell
    deep = verify_store(world["store"], mixture=mixture, deep=True, progress=False)
    assert [f.kind for f in deep.faults] == ["content_id"]
    bad = deep.bad_frames()
    assert 15 in bad and all(12 <= b < 24 for b in bad)  # only episode 1, around the altered frame
    assert deep.damaged_shards() == sorted({b // 8 for b in bad})


def test_store_of_another_dataset_is_reported(world, tmp_path):
    other = tmp_path / "other"
    write_lerobot_dataset(other / SUITE_FOLDERS[SUITE], episodes()[:1])  # 10 frames instead of 24
    report = verify_store(world["store"], mixture=LiberoMixture(SUITE, data_root=other), progress=False)
    assert [f.kind for f in report.faults] == ["dataset"]
    assert "store has 24, dataset on disk has 10" in report.faults[0].message


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ}
    env.pop("GEO3D_DATA_ROOT", None)
    return subprocess.run([sys.executable, "-m", "geo3d.cli", "verify-cache", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)


@pytest.mark.slow  # an end-to-end subprocess run: `make test`, not the fast tier
def test_cli_exit_codes_json_and_mark_damaged(world, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(world["store"], store)
    ok = run_cli(str(store), "--data-root", str(world["data"]), "--deep", "--no-progress")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "CLEAN" in ok.stdout

    usage = run_cli(str(tmp_path / "missing"))
    assert usage.returncode == 2 and "error:" in usage.stderr and "does not exist" in usage.stderr
    no_data = run_cli(str(store))  # libero_spatial needs a data root: a usage error, nothing checked
    assert no_data.returncode == 2 and "--data-root" in no_data.stderr
    assert run_cli(str(store), "--recompute", "-3").returncode == 2

    f = store / "tokens/c/1/0/0/0"
    data = bytearray(f.read_bytes())
    data[2 * 128 + 5] ^= 0x10  # frame 10
    f.write_bytes(bytes(data))
    bad = run_cli(str(store), "--data-root", str(world["data"]), "--json", "--mark-damaged", "--no-progress")
    assert bad.returncode == 1, bad.stderr
    out = json.loads(bad.stdout)
    assert out["ok"] is False and out["bad_frames"] == [10] and out["marked_damaged"] == [1]
    assert FeatureStore.open(store).missing_shards() == [1]
    again = run_cli(str(store), "--no-dataset", "--no-progress")
    assert again.returncode == 1 and "uncommitted" in again.stdout and "8-15" in again.stdout


def test_cli_finds_the_data_root_recorded_by_precompute(world, tmp_path, monkeypatch):
    monkeypatch.delenv("GEO3D_DATA_ROOT", raising=False)
    store = tmp_path / "store"
    shutil.copytree(world["store"], store)
    (store / "precompute_logs").mkdir()
    (store / "precompute_logs" / "20260101T000000-host-1.config.yaml").write_text(
        f"data:\n  suite: {SUITE}\n  data_root: {world['data']}\n")
    result = run_geo3d(["verify-cache", str(store), "--json", "--no-progress"])
    out = json.loads(result.stdout)
    assert out["ok"] and out["data_root"] == str(world["data"]) and "dataset" in out["levels"]
