"""`geo3d doctor` on healthy and broken inputs: a Qwen2.5-VL directory with a missing / truncated safetensors
shard, truncated MapAnything weights, a missing suite, a full disk (simulated), an incomplete store, usage
errors. The Qwen directory is real: the tiny Qwen2.5-VL's config + tokenizer + processor and its random-init
weights saved by transformers as an indexed, sharded safetensors checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import geo3d.cli.doctor.checks_data as checks_data
from geo3d.core.config import CONFIG_DIR, PACKAGE_ROOT
from geo3d.features_store.testing import make_synthetic_store
from geo3d.policy.configuration_policy import PolicyConfig
from geo3d.policy.tiny_qwen import build_tiny_model, tiny_model_dir

from helpers import run_geo3d

DEMO = ["--suite", "demo", "--config", "train/demo"]


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    model_cfg = OmegaConf.load(CONFIG_DIR / "model" / "tiny.yaml").model
    tiny = PolicyConfig.from_cfg(model_cfg).vlm.tiny
    out = tmp_path_factory.mktemp("qwen") / "Qwen2.5-VL-tiny"
    shutil.copytree(tiny_model_dir(tiny), out)
    build_tiny_model(tiny, out, torch.float32, "sdpa").save_pretrained(out, max_shard_size="2MB")
    assert (out / "model.safetensors.index.json").is_file()
    return out


def doctor(*args: str) -> tuple[int, str, dict | None]:
    r = run_geo3d(["doctor", *args], expect=None)
    data = None
    if "--json" in args and r.returncode in (0, 1):
        data = json.loads(r.stdout)
    return r.returncode, r.output, data


def _by_check(data: dict) -> dict[str, dict]:
    return {f["check"]: f for f in data["findings"]}


def _shards(qwen: Path) -> list[str]:
    return sorted(set(json.loads((qwen / "model.safetensors.index.json").read_text())["weight_map"].values()))


def test_healthy_run_exits_0_and_says_what_cannot_apply(qwen_dir, tmp_path):
    code, out, data = doctor(*DEMO, "--store", str(tmp_path / "store"), f"model.vlm.source={qwen_dir}", "--json")
    assert code == 0, out
    f = _by_check(data)
    assert f["Qwen2.5-VL weights"]["status"] == "ok" and f"{len(_shards(qwen_dir))} safetensors" in \
        f["Qwen2.5-VL weights"]["detail"]
    assert f["Qwen2.5-VL tokenizer"]["status"] == f["Qwen2.5-VL processor"]["status"] == "ok"
    # this run does not need a GPU: without one CUDA is "not available" (not a failure); on a GPU host it is ok
    assert f["CUDA"]["status"] == ("ok" if torch.cuda.is_available() else "not available")
    assert f["suite libero_spatial"]["status"] == "ok" and "546 frames" in f["suite libero_spatial"]["detail"]
    assert f["store disk space"]["status"] == "ok" and "still needs ~" in f["store disk space"]["detail"]
    assert "train/memory.py" in f["GPU memory"]["detail"] and "CUDA context" in f["GPU memory"]["detail"]
    assert f["flash_attention_2"]["status"] in ("ok", "not available")  # reported, never needed by this run


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: a --gpu run does not fail for lack of one")
def test_gpu_run_without_gpu_fails(tmp_path):
    code, out, data = doctor(*DEMO, "--store", str(tmp_path / "s"), "--gpu", "--json")
    assert code == 1 and _by_check(data)["CUDA"]["status"] == "FAIL", out


def test_missing_qwen_shard_fails(qwen_dir, tmp_path):
    broken = tmp_path / "qwen"
    shutil.copytree(qwen_dir, broken)
    gone = _shards(broken)[1]
    (broken / gone).unlink()
    code, out, _ = doctor(*DEMO, "--store", str(tmp_path / "s"), f"model.vlm.source={broken}")
    assert code == 1, out
    line = next(x for x in out.splitlines() if "Qwen2.5-VL weights" in x)
    assert "FAIL" in line and f"{gone} missing" in line and "re-download" in line


def test_truncated_qwen_shard_fails(qwen_dir, tmp_path):
    broken = tmp_path / "qwen"
    shutil.copytree(qwen_dir, broken)
    shard = broken / _shards(broken)[0]
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 1000)
    code, out, _ = doctor(*DEMO, "--store", str(tmp_path / "s"), f"model.vlm.source={broken}")
    assert code == 1 and "is truncated" in out and shard.name in out, out


def test_truncated_mapanything_weights_fail(qwen_dir, tmp_path):
    weights = tmp_path / "mapanything"
    weights.mkdir()
    (weights / "config.json").write_text(json.dumps({"encoder_config": {"uses_torch_hub": False},
                                                     "info_sharing_config": {"module_args": {"dim": 1536}}}))
    shutil.copyfile(qwen_dir / _shards(qwen_dir)[0], weights / "model.safetensors")
    with open(weights / "model.safetensors", "r+b") as f:
        f.truncate(4096)
    code, out, data = doctor(*DEMO, "--store", str(tmp_path / "s"), "--encoder", "mapanything", "--weights",
                             str(weights), "--stage", "precompute", "--json")
    f = _by_check(data)
    assert code == 1 and f["MapAnything weights"]["status"] == "FAIL" and "truncated" in f["MapAnything weights"]["detail"]
    # the store estimate uses MapAnything's D=1536 read from its config.json: ~1125 x 2 x 196 x 1536 x 2 bytes
    assert "~1.3 GiB" in f["store disk space"]["detail"], f["store disk space"]


def test_missing_suite_fails(tmp_path):
    code, out, _ = doctor("--suite", "libero_goal", "--data-root", str(PACKAGE_ROOT / "demo_data"), "--config",
                          "train/demo", "--store", str(tmp_path / "s"))
    assert code == 1, out
    line = next(x for x in out.splitlines() if "suite libero_goal" in x)
    assert "FAIL" in line and "does not exist" in line and "download libero_goal_no_noops_1.0.0_lerobot" in line


def test_full_disk_simulated_fails(monkeypatch, tmp_path):
    monkeypatch.setattr(checks_data, "free_bytes", lambda path: 10 << 20)  # 10 MiB left
    code, out, data = doctor(*DEMO, "--store", str(tmp_path / "s"), "--json")
    f = _by_check(data)
    assert code == 1 and f["store disk space"]["status"] == "FAIL" and "10.0 MiB free" in f["store disk space"]["detail"]
    assert f["checkpoint disk space"]["status"] == "FAIL"
    assert "store.compressor=zstd" in f["store disk space"]["fix"]


def test_incomplete_store_for_training_points_at_precompute(tmp_path):
    store = make_synthetic_store(tmp_path / "store", frames=32, shard_frames=8)
    store.mark_damaged([1])
    code, out, data = doctor(*DEMO, "--store", str(store.path), "--stage", "train", "--json")
    f = _by_check(data)["store completeness"]
    assert code == 1 and f["status"] == "FAIL" and "3/4 shards committed" in f["detail"]
    assert f"geo3d verify-cache {store.path}" in f["detail"]


def test_usage_errors_exit_2():
    assert doctor("--stage", "bogus")[0] == 2
    assert doctor(*DEMO, "model_config=nope")[0] == 2
