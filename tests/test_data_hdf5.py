"""LIBERO HDF5 input: a LIBERO-layout copy of the demo data (images turned back to raw renders) gives the
models identical inputs, identical norm stats and the tiny encoder identical tokens; the global index follows
files in name order and demos in numeric order; broken files are named with their demo."""

from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from geo3d.core.config import PACKAGE_ROOT
from geo3d.core.errors import DataError
from geo3d.data.mixture import LiberoMixture
from geo3d.data.norm_stats import compute_norm_stats
from geo3d.data.suites import DEMO_DATA_ROOT
from geo3d.data.transforms import to_model_images
from geo3d.features_store.store import open_arrays

from hdf5_fixtures import hdf5_copy, write_task_file


@pytest.fixture(scope="module")
def h5_root(tmp_path_factory) -> Path:
    return hdf5_copy(DEMO_DATA_ROOT, tmp_path_factory.mktemp("libero_hdf5"))


def _item_equal(a: dict, b: dict) -> None:
    for k in ("images", "state", "actions", "action_pad"):
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    for k in ("instruction", "global_index", "dataset_id", "episode_index", "frame_index"):
        assert a[k] == b[k], k


def test_hdf5_copy_gives_identical_model_inputs_and_stats(h5_root):
    lr, h5 = LiberoMixture("demo", DEMO_DATA_ROOT, image_size=112), LiberoMixture("demo", h5_root, image_size=112)
    assert [type(d).__name__ for d in h5.datasets] == ["LiberoHDF5Dataset"] * 2
    assert [p.name for p in h5.paths] == ["libero_spatial_no_noops", "libero_object_no_noops"]
    assert len(lr) == len(h5) == 1125 and lr.episodes() == h5.episodes()
    assert h5.frame_orientation(0) == "raw_render" and lr.frame_orientation(0) == "upright"
    for i in range(0, len(lr), 41):  # random access (stage 2)
        _item_equal(lr[i], h5[i])
    span = h5.episodes()[5]  # sequential access (stage 1): every frame of one episode
    seq_h5 = [to_model_images(f, 56, "raw_render") for f, _ in h5.iter_episode(span.dataset_id, span.episode_index)]
    seq_lr = [to_model_images(f, 56, "upright") for f, _ in lr.iter_episode(span.dataset_id, span.episode_index)]
    assert len(seq_h5) == span.length and all(np.array_equal(a, b) for a, b in zip(seq_h5, seq_lr))
    s_lr, s_h5 = compute_norm_stats(lr), compute_norm_stats(h5)
    assert s_lr["action"] == s_h5["action"] and s_lr["state"] == s_h5["state"]  # exact, float for float
    assert s_h5["num_frames"] == 1125
    ident = h5.identity()["datasets"][1]
    assert ident["codebase_version"] == "libero_hdf5" and ident["files"][0].endswith("_demo.hdf5")


def _precompute(data_root: Path, store: Path, *extra: str) -> None:
    cmd = [sys.executable, "-m", "geo3d.cli", "precompute", "--suite", "libero_object", "--data-root",
           str(data_root), "--store", str(store), "--batch-size", "16", "data.image_size=56",
           "encoder.tokens_per_view=4", "encoder.tiny.width=32", "encoder.tiny.heads=2", "encoder.tiny.out_dim=16",
           "store.shard_frames=64", "precompute.decode_workers=0", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=PACKAGE_ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow  # an end-to-end subprocess run: `make test`, not the fast tier
def test_precompute_tokens_identical_from_hdf5_and_lerobot(h5_root, tmp_path):
    _precompute(DEMO_DATA_ROOT, tmp_path / "lr")
    _precompute(h5_root, tmp_path / "h5")
    a, b = open_arrays(tmp_path / "lr"), open_arrays(tmp_path / "h5")
    assert a["tokens"].shape[0] == 579
    assert np.array_equal(np.asarray(a["tokens"][:]), np.asarray(b["tokens"][:]))  # bit for bit
    for k in ("dataset_id", "episode_index", "frame_index"):
        assert np.array_equal(np.asarray(a[k][:]), np.asarray(b[k][:]))
    deep = subprocess.run([sys.executable, "-m", "geo3d.cli", "verify-cache", str(tmp_path / "h5"), "--deep",
                           "--data-root", str(h5_root), "--no-progress"],
                          capture_output=True, text=True, cwd=PACKAGE_ROOT, timeout=600)
    assert deep.returncode == 0, deep.stdout + deep.stderr[-2000:]


def _demo(rng: np.random.Generator, n: int, size: int = 8, tag: int = 0) -> dict:
    img = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    img[:, 0, 0, 0] = tag  # which demo a frame came from
    return {"agentview": img, "wrist": img[:, ::-1].copy(), "state": rng.normal(size=(n, 8)).astype(np.float32),
            "action": rng.uniform(-1, 1, (n, 7)).astype(np.float32)}


def _suite_dir(root: Path, name: str = "libero_10") -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_global_index_files_by_name_demos_by_number(tmp_path):
    rng = np.random.default_rng(0)
    d = _suite_dir(tmp_path)  # the release's folder name
    write_task_file(d / "b_task_demo.hdf5", "second task", [_demo(rng, 3, tag=100)])
    write_task_file(d / "a_task_demo.hdf5", "first task", [_demo(rng, 2 + i % 3, tag=i) for i in range(12)],
                    state_layout="ee_pos_ori")
    m = LiberoMixture("libero_10", tmp_path, image_size=None)
    assert m.datasets[0].num_episodes == 13
    with h5py.File(d / "a_task_demo.hdf5") as h:  # episode 10 is demo_10, after demo_9 (not after demo_1)
        want = np.asarray(h["data/demo_10/obs/agentview_rgb"][1])
        state10 = np.concatenate([h["data/demo_10/obs/ee_pos"][:], h["data/demo_10/obs/ee_ori"][:],
                                  h["data/demo_10/obs/gripper_states"][:]], 1).astype(np.float32)
    s10 = m.span(0, 10)
    item = m[s10.start + 1]
    assert item["images"][0, ::-1, ::-1, 0][0, 0] == 10 and np.array_equal(item["images"][0], want[::-1, ::-1])
    assert np.array_equal(m[s10.start]["state"], state10[0]) and item["instruction"] == "first task"
    assert [m[m.span(0, e).start]["images"][0, -1, -1, 0] for e in range(13)] == [*range(12), 100]
    assert m[len(m) - 1]["instruction"] == "second task"


def _read_in_child(m: LiberoMixture, idx: list[int], q) -> None:
    q.put([m.read_stored_frames(i).tobytes() for i in idx])


def test_random_access_after_fork_opens_its_own_handles(tmp_path):
    rng = np.random.default_rng(1)
    write_task_file(_suite_dir(tmp_path) / "t_demo.hdf5", "a task", [_demo(rng, 20, tag=i) for i in range(3)])
    m = LiberoMixture("libero_10", tmp_path, image_size=None)
    want = [m.read_stored_frames(i).tobytes() for i in range(0, 60, 7)]  # parent holds open h5py handles now
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_read_in_child, args=(m, list(range(0, 60, 7)), q)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert got == [want, want]
    assert m.read_stored_frames(59).tobytes() == m.datasets[0].read_frame(2, 19).tobytes()  # parent still reads


def _broken(tmp_path: Path, edit) -> str:
    rng = np.random.default_rng(2)
    f = write_task_file(_suite_dir(tmp_path) / "pick_demo.hdf5", "pick", [_demo(rng, 5) for _ in range(3)])
    edit(f)
    with pytest.raises(DataError) as e:
        LiberoMixture("libero_10", tmp_path, image_size=None)
    return str(e.value)


def test_missing_obs_key_names_file_and_demo(tmp_path):
    def drop(f):
        with h5py.File(f, "a") as h:
            del h["data/demo_1/obs/gripper_states"]
    msg = _broken(tmp_path, drop)
    assert "pick_demo.hdf5 data/demo_1" in msg and "obs/gripper_states" in msg


def test_image_count_differs_from_actions(tmp_path):
    def shorten(f):
        with h5py.File(f, "a") as h:
            img = h["data/demo_2/obs/eye_in_hand_rgb"][:4]
            del h["data/demo_2/obs/eye_in_hand_rgb"]
            h["data/demo_2/obs/eye_in_hand_rgb"] = img
    msg = _broken(tmp_path, shorten)
    assert "pick_demo.hdf5 data/demo_2" in msg and "4 images" in msg and "5 steps" in msg


def test_truncated_file_is_named(tmp_path):
    def truncate(f):
        size = f.stat().st_size
        with open(f, "r+b") as fh:
            fh.truncate(size // 2)
    msg = _broken(tmp_path, truncate)
    assert "pick_demo.hdf5" in msg and "truncated" in msg


def test_two_copies_of_one_suite_are_refused(tmp_path):
    rng = np.random.default_rng(3)
    for name in ("libero_10", "libero_10_no_noops"):
        write_task_file(_suite_dir(tmp_path, name) / "t_demo.hdf5", "a task", [_demo(rng, 4)])
    with pytest.raises(DataError, match="several copies"):
        LiberoMixture("libero_10", tmp_path)


@pytest.mark.slow  # an end-to-end subprocess run: `make test`, not the fast tier
def test_train_runs_on_hdf5_data(tmp_path):
    """`geo3d train` end to end on a LIBERO HDF5 suite (with a store made from it): norm stats equal the LeRobot
    copy's, and the checkpoint is written."""
    from data_fixtures import make_synthetic_libero
    from helpers import spawn_geo3d
    from train_fixtures import DIM, IMAGE, TOKENS, make_matching_store, train_args

    lr_root = make_synthetic_libero(tmp_path / "lr", suites=("libero_spatial",), episodes_per_suite=2, length=10,
                                    size=IMAGE)
    h5_root = hdf5_copy(lr_root, tmp_path / "h5", suites=("libero_spatial",), folder="{suite}")
    mixture = LiberoMixture("libero_spatial", h5_root, image_size=IMAGE)
    store = make_matching_store(mixture, tmp_path / "store", views=2, tokens=TOKENS, dim=DIM, shard_frames=8)
    out = tmp_path / "run"
    proc = spawn_geo3d(train_args(h5_root, store, out, "mean", 2, "train.num_workers=2"), expect=None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads((out / "norm_stats.json").read_text())
    want = compute_norm_stats(LiberoMixture("libero_spatial", lr_root))
    assert stats["action"] == want["action"] and stats["state"] == want["state"]
    assert any((out / "checkpoints").iterdir())
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # both steps trained (DataLoader workers)


@pytest.mark.slow  # an end-to-end subprocess run: `make test`, not the fast tier
def test_inspect_shows_the_same_model_inputs_for_both_copies(h5_root, tmp_path):
    """`geo3d inspect` of one frame from the HDF5 copy and from the LeRobot copy: pixel-identical model inputs."""
    outs = []
    for name, root in (("lr", DEMO_DATA_ROOT), ("h5", h5_root)):
        out = tmp_path / name
        proc = subprocess.run([sys.executable, "-m", "geo3d.cli", "inspect", "--out", str(out), "--suite", "demo",
                               "--frame", "700", "--data-root", str(root)], cwd=PACKAGE_ROOT, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs.append(out)
    pngs = sorted(p.name for p in outs[0].glob("*.png"))
    assert pngs and pngs == sorted(p.name for p in outs[1].glob("*.png"))
    for name in pngs:
        a, b = (np.asarray(Image.open(o / name)) for o in outs)
        assert np.array_equal(a, b), name
