"""`geo3d inspect`: the PNGs hold exactly what the model input tensors hold (read back, they rebuild the same
tensors through the real processor / encoder), the JSON matches the training sample, and a live simulator frame
goes through eval's path (compared with the stored demo frame of the same init state)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geo3d.cli.inspection.cli import compose_inspect_config
from geo3d.cli.inspection.run import build_paths
from geo3d.data.dataset_base import frame_content_id
from geo3d.data.mixture import LiberoMixture
from geo3d.data.norm_stats import Normalizer, compute_norm_stats
from geo3d.encoders.views import frames_to_model_input

from helpers import run_geo3d, spawn_geo3d

VIEWS = ("agentview", "wrist")


def _inspect(out: Path, *args: str, process: bool = False) -> dict:
    """`geo3d inspect` in-process, or as a real process for the simulator (its GL backend is chosen at start-up)."""
    (spawn_geo3d if process else run_geo3d)(["inspect", "--out", str(out), *args])
    return json.loads((out / "inspect.json").read_text())


def _png(out: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(out / f"{name}.png").convert("RGB"))


@pytest.fixture(scope="module")
def paths():
    """The input paths inspect builds for the demo (tiny Qwen processor, tiny encoder), built in-process."""
    cfg = compose_inspect_config(None, None, "demo", None, None)
    mixture = LiberoMixture.from_config(cfg)
    return build_paths(cfg, None, mixture, None), mixture


def test_dataset_frame_pngs_are_the_model_inputs(tmp_path, paths):
    p, mixture = paths
    res = _inspect(tmp_path, "--suite", "demo", "--frame", "130")
    item = mixture[130]
    vlm_png = np.stack([_png(tmp_path, f"vlm_{v}") for v in VIEWS])
    geo_png = np.stack([_png(tmp_path, f"geometry_{v}") for v in VIEWS])
    # what the VLM got: pixel_values rebuilt from the PNGs by the policy's own processor equal the sample's
    tokenizer = p.processor.vlm_inputs
    want = tokenizer(item["images"][None], [item["instruction"]])
    got = tokenizer(vlm_png[None], [item["instruction"]])
    assert torch.equal(got["image_grid_thw"], want["image_grid_thw"])
    torch.testing.assert_close(got["pixel_values"], want["pixel_values"], rtol=0, atol=1e-5)
    # what the geometry encoder got: its normalized views rebuilt from the PNGs equal those of the stored frame
    stored = frames_to_model_input(mixture.read_stored_frames(130), p.encoder.image_size, "upright")
    rebuilt = p.encoder.model_inputs(torch.from_numpy(geo_png[None]))
    for a, b in zip(rebuilt, p.encoder.model_inputs(torch.from_numpy(stored[None]))):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(geo_png, stored)  # upright LeRobot frames, unturned
    np.testing.assert_array_equal(vlm_png, item["images"])  # 224 is already a Qwen size: no resize
    # the JSON is the training sample
    assert res["instruction"] == item["instruction"] and item["instruction"] in res["prompt"]
    assert res["prompt_token_ids"] == want["input_ids"][0][want["attention_mask"][0].bool()].tolist()
    assert "<|image_pad|>x64" in res["prompt"] and res["prompt"].count("<|vision_start|>") == 2
    np.testing.assert_allclose(res["state"], item["state"], atol=1e-6)
    np.testing.assert_allclose(res["actions_raw"], item["actions"], atol=1e-6)
    stats, norm = compute_norm_stats(mixture), p.cfg.model.normalization  # as `geo3d train` computes them
    actions = Normalizer(stats, "action", norm.action, tuple(norm.raw_action_dims)).normalize(item["actions"])
    np.testing.assert_allclose(res["actions_normalized"], actions, atol=1e-5)
    np.testing.assert_allclose(res["state_normalized"], Normalizer(stats, "state", norm.state).normalize(item["state"]),
                               atol=1e-5)
    assert res["action_pad"] == item["action_pad"].tolist()
    assert int(res["content_id"], 16) == frame_content_id(mixture.read_stored_frames(130))
    assert res["orientation"]["source"] == "upright" and (res["episode_index"], res["frame_index"]) == (1, 9)


def test_bad_input_is_one_clear_error_and_nothing_is_written(tmp_path):
    for args, needle in ((["--suite", "demo"], "exactly one of --frame"),
                         (["--suite", "demo", "--frame", "999999"], "out of range")):
        proc = run_geo3d(["inspect", "--out", str(tmp_path / "o"), *args], expect=2)
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not (tmp_path / "o" / "inspect.json").exists()


@pytest.mark.sim
def test_sim_frame_goes_through_evals_path_and_matches_the_stored_demo_frame(tmp_path, paths):
    """libero_spatial task 0, init state 0 is demo episode 0: live and stored inputs agree up to AV1 noise."""
    from eval_fixtures import sim_available

    reason = sim_available()
    if reason:
        pytest.skip(reason)
    p, mixture = paths
    res = _inspect(tmp_path / "sim", "--suite", "libero_spatial", "--sim-task", "0", "--init-state", "0",
                   "eval.settle_steps=10", "eval.render_size=256", "eval.seed=0",  # as the demo was rendered
                   process=True)
    assert res["source"] == "sim" and res["orientation"]["source"] == "raw_render" and res["actions_raw"] is None
    item = mixture[0]
    assert res["instruction"] == item["instruction"]
    for v, view in enumerate(VIEWS):
        live = _png(tmp_path / "sim", f"vlm_{view}").astype(int)
        stored = item["images"][v].astype(int)
        diff, turned = np.abs(live - stored).mean(), np.abs(live[::-1, ::-1] - stored).mean()
        assert diff < 4 and turned > 5 * diff, (view, diff, turned)
        np.testing.assert_array_equal(_png(tmp_path / "sim", f"geometry_{view}"), live)  # eval encodes these images
