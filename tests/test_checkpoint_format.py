"""Checkpoints in the ecosystem's format: a copied checkpoint dir alone serves and predicts; a Qwen2.5-VL-3B-shaped
checkpoint (real config dims and key names, reduced depth) round-trips through sharded safetensors without the
base model dir; a kill -9 in the middle of a save leaves the previous checkpoint usable; old checkpoints are
refused clearly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from transformers import Qwen2_5_VLConfig

from geo3d.core.config import PACKAGE_ROOT
from geo3d.core.errors import Geo3dError
from geo3d.data.orientation import orientation_probe
from geo3d.evaluation.client import RemotePolicy
from geo3d.policy.configuration_policy import PolicyConfig, full_model_section
from geo3d.policy.modeling_policy import build_policy
from geo3d.policy.pretrained import Policy
from geo3d.policy.run_dir import MARKER, latest_checkpoint, list_checkpoints
from geo3d.policy.vlm import QWEN2_5_VL_3B_ARCH

from eval_fixtures import ENV, SHARED_RUNS, ServeProcess, trained_runs

pytestmark = [pytest.mark.slow, SHARED_RUNS]  # trains real runs first (eval_fixtures)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return trained_runs(tmp_path_factory.getbasetemp() / "eval_runs")


def test_copied_checkpoint_dir_alone_serves_and_predicts(runs, tmp_path):
    ckpt = tmp_path / "elsewhere" / "my_checkpoint"
    shutil.copytree(latest_checkpoint(runs["qformer"]), ckpt)
    empty_cache = tmp_path / "no_cache"  # the tiny VLM's build cache: a checkpoint must not need it
    srv = ServeProcess(ckpt, env={**ENV, "GEO3D_CACHE": str(empty_cache)})
    try:
        with urllib.request.urlopen(srv.url.replace("ws://", "http://") + "/healthz", timeout=30) as resp:
            assert resp.status == 200 and resp.read() == b"ok\n"
        client = RemotePolicy(srv.url)
        assert client.health()["checkpoint"] == str(ckpt)
        images = np.random.default_rng(0).integers(0, 256, (2, 56, 56, 3), dtype=np.uint8)
        actions = client.predict_action(images, "pick up the black bowl", np.zeros(8, np.float32))
        assert actions.shape == (8, 7) and np.isfinite(actions).all()
        client.close()
    finally:
        srv.stop()
    assert not empty_cache.exists() or not any(empty_cache.iterdir())


def test_processor_normalizes_state_and_round_trips_actions(runs):
    policy = Policy.from_pretrained(runs["pool"])
    pipe = policy.processor
    stats = pipe.stats
    assert pipe.spec.state == "mean_std" and pipe.spec.action == "min_max"
    assert pipe.vlm_inputs.template.startswith("Your task is {instruction}.")  # the pool run is preset fork: the
    assert pipe.vlm_inputs.template == PolicyConfig.from_cfg(policy.config).vlm.prompt_template  # served = trained
    state = np.asarray(stats["state"]["mean"], np.float32) + np.asarray(stats["state"]["std"], np.float32)
    images = np.zeros((1, 2, 56, 56, 3), np.uint8)
    batch = pipe.preprocess(images, ["open the top drawer"], state[None])
    np.testing.assert_allclose(batch["state"].numpy(), 1.0, atol=1e-5)  # (mean + std - mean) / std
    raw = np.asarray(stats["action"]["max"], np.float32)[None]
    np.testing.assert_allclose(pipe.postprocess(pipe.normalize_actions(raw)), raw, atol=1e-5)


LOAD_ALONE = """
import sys, numpy as np, torch
from geo3d.policy.pretrained import Policy
policy = Policy.from_pretrained(sys.argv[1])
images = np.zeros((2, 56, 56, 3), np.uint8)
actions = policy.predict_action(images, "open the drawer", np.zeros(8, np.float32), geometry=torch.zeros(2, 16, 128))
stages = sorted(m for m in sys.modules if m.split(".")[:2] in (["geo3d", "train"], ["geo3d", "precompute"],
                                                               ["geo3d", "features_store"], ["geo3d", "evaluation"]))
print(actions.shape, policy.step, stages)
"""


def test_policy_loads_and_acts_in_a_process_that_imports_no_stage(runs, tmp_path):
    """The policy is one object below both stages: a fresh process loads a run's checkpoint directory and acts
    without importing the trainer, stage 1, the store or evaluation."""
    r = subprocess.run([sys.executable, "-c", LOAD_ALONE, str(runs["pool"])], cwd=tmp_path, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    shape, _, rest = r.stdout.strip().partition(") ")
    assert shape == "(8, 7" and rest.split(" ", 1)[1] == "[]", r.stdout


def test_save_pretrained_round_trips_a_policy(runs, tmp_path):
    policy = Policy.from_pretrained(runs["pool"])
    policy.save_pretrained(tmp_path / "copy", step=policy.step, extra={"image_orientation": policy_marker(runs)})
    again = Policy.from_pretrained(tmp_path / "copy")
    a, b = policy.model.state_dict(), again.model.state_dict()
    assert again.step == policy.step and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    images = np.random.default_rng(1).integers(0, 256, (2, 56, 56, 3), dtype=np.uint8)
    geometry = torch.randn(2, 16, 128, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    x = policy.predict_action(images, "open the drawer", np.ones(8, np.float32), geometry=geometry)
    torch.manual_seed(0)
    y = again.predict_action(images, "open the drawer", np.ones(8, np.float32), geometry=geometry)
    np.testing.assert_array_equal(x, y)


def policy_marker(runs) -> dict:
    return json.loads((latest_checkpoint(runs["pool"]) / MARKER).read_text())["image_orientation"]


def _reduced_3b(tmp_path):
    """The published Qwen2.5-VL-3B config at depth 2 (vision depth 2) + the 3B policy config with 2 DiT layers."""
    arch = json.loads(json.dumps(QWEN2_5_VL_3B_ARCH))
    arch["text_config"]["num_hidden_layers"] = 2
    arch["vision_config"].update(depth=2, fullatt_block_indexes=[1])
    Qwen2_5_VLConfig(**arch).save_pretrained(tmp_path / "vlm_src")
    cfg = OmegaConf.load(PACKAGE_ROOT / "configs" / "model" / "qwen2_5_vl_3b.yaml")
    cfg.model.vlm.source = str(tmp_path / "absent_base_dir")  # never read
    OmegaConf.update(cfg, "model.action_head.num_layers", 2, force_add=True)  # on top of the YAML
    cfg.model = OmegaConf.create(full_model_section(cfg.model))  # every default filled in, as a run records it
    cfg.data = {"image_size": 224}
    cfg.train = {"checkpoint": {"max_shard_size": "300MB", "starvla_pt": False}}
    return cfg


def test_qwen3b_shaped_checkpoint_round_trips_sharded_without_base_dir(tmp_path, runs):
    cfg = _reduced_3b(tmp_path)
    policy = build_policy(cfg.model, vlm_config_dir=tmp_path / "vlm_src")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float32).to(p.dtype))
    tiny_processor = Policy.from_pretrained(runs["pool"]).processor  # no 151k-token tokenizer offline: the tiny one
    ckpt = tmp_path / "ckpt"  # stands in
    record = Policy(policy, tiny_processor, cfg).save_pretrained(
        ckpt, 7, max_shard_size="300MB", extra={"image_orientation": orientation_probe()})
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    assert len(record["weights"]) > 1 and set(index["weight_map"].values()) == set(record["weights"])
    assert record["tied"] == {"vlm.model.lm_head.weight": "vlm.model.model.language_model.embed_tokens.weight"}
    assert "vlm.model.model.visual.blocks.1.attn.qkv.weight" in index["weight_map"]
    saved_vlm = json.loads((ckpt / "vlm" / "config.json").read_text())
    assert saved_vlm["text_config"]["hidden_size"] == 2048 and saved_vlm["text_config"]["vocab_size"] == 151936

    loaded = Policy.from_pretrained(ckpt)
    assert loaded.step == 7 and json.loads((ckpt / MARKER).read_text()) == json.loads(json.dumps(record))
    a, b = policy.state_dict(), loaded.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    tied = loaded.model.vlm.model
    assert tied.lm_head.weight.data_ptr() == tied.model.language_model.embed_tokens.weight.data_ptr()
    assert loaded.model.vlm.model.dtype == torch.bfloat16

    os.remove(ckpt / record["weights"][-1])
    with pytest.raises(Geo3dError, match="missing weight shard"):
        Policy.from_pretrained(ckpt)


def test_old_format_checkpoint_is_refused_with_a_clear_message(runs, tmp_path):
    ckpt = tmp_path / "old"
    shutil.copytree(latest_checkpoint(runs["pool"]), ckpt)
    marker = json.loads((ckpt / MARKER).read_text())
    marker.pop("format")
    marker["weights"] = "steps_2_pytorch_model.pt"
    (ckpt / MARKER).write_text(json.dumps(marker))
    with pytest.raises(Geo3dError, match="old-format geo3d checkpoint"):
        Policy.from_pretrained(ckpt)


KILL_SCRIPT = """
import sys, time
import safetensors.torch as st
real = st.save_file
def slow(tensors, filename, metadata=None):
    real(tensors, filename, metadata=metadata)
    if "steps_4" in filename:
        print("WRITING", filename, flush=True)
        time.sleep(600)
st.save_file = slow
from geo3d.cli import app
sys.argv = ["geo3d"] + sys.argv[1:]
app()
"""


def test_kill_9_mid_save_leaves_the_previous_checkpoint_usable(tmp_path):
    from train_fixtures import make_train_data, train_args

    data, store = make_train_data(tmp_path)
    out = tmp_path / "run"
    args = train_args(data, store, out, "pool", 4, "train.save_interval=2")
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, *args], cwd=PACKAGE_ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 300
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if "WRITING" in line or time.monotonic() > deadline:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert any("WRITING" in x for x in lines), "".join(lines)[-3000:]
    assert (out / "checkpoints" / ".steps_4.partial").is_dir()  # killed inside the save
    assert [s for s, _ in list_checkpoints(out)] == [2]
    policy = Policy.from_pretrained(out)
    assert policy.step == 2
    sample_images = np.zeros((2, 64, 64, 3), np.uint8)
    geometry = torch.zeros(2, 16, 32)
    assert policy.predict_action(sample_images, "open the drawer", np.zeros(8), geometry=geometry).shape == (8, 7)
    r = subprocess.run([sys.executable, "-m", "geo3d.cli", *args, "--resume"], cwd=PACKAGE_ROOT, env=ENV,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [s for s, _ in list_checkpoints(out)] == [2, 4] and not (out / "checkpoints" / ".steps_4.partial").exists()
