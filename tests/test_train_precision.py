"""fp32 master weights (issue 10 §3): with bf16 compute at lr 1e-5 one step moves as many VLM weights as fp32."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from omegaconf import OmegaConf

from geo3d.core.config import CONFIG_DIR
from geo3d.core.device import resolve_compute_dtype
from geo3d.core.errors import Geo3dError
from geo3d.policy.modeling_policy import build_policy
from geo3d.policy.precision import accelerate_precision, inference_autocast, keep_trainable_fp32
from geo3d.train.optim import apply_freeze

LR = 1e-5


@pytest.fixture(autouse=True)
def _tiny_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GEO3D_CACHE", str(tmp_path_factory.getbasetemp() / "geo3d_cache"))


def _policy(vlm_dtype: str):
    cfg = OmegaConf.load(CONFIG_DIR / "model" / "tiny.yaml")
    OmegaConf.update(cfg, "model.vlm.dtype", vlm_dtype, force_add=True)  # on top of the YAML
    OmegaConf.update(cfg, "model.compressor.type", "mean", force_add=True)
    torch.manual_seed(0)
    return build_policy(cfg.model)


def _fraction_moved(vlm_dtype: str, precision: str, master_fp32: bool) -> float:
    """One real accelerate step (prepare, autocast forward, backward, AdamW at lr 1e-5) on the tiny policy."""
    from test_model_policy import make_batch

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    policy = _policy(vlm_dtype)
    if master_fp32:
        keep_trainable_fp32(policy, precision)
    acc = Accelerator(mixed_precision=precision, cpu=True)
    vlm = list(policy.vlm.parameters())
    before = [p.detach().clone() for p in vlm]
    optimizer = torch.optim.AdamW(policy.parameters(), lr=LR, weight_decay=0.0)
    model, optimizer = acc.prepare(policy, optimizer)
    batch = make_batch(policy)
    torch.manual_seed(1)
    acc.backward(model(batch).loss)
    optimizer.step()
    moved = sum(int((p.detach() != b).sum()) for p, b in zip(vlm, before))
    AcceleratorState._reset_state(True)
    return moved / sum(p.numel() for p in vlm)


def test_bf16_compute_with_fp32_master_moves_weights_like_fp32():
    reference = _fraction_moved("float32", "no", master_fp32=False)
    geo3d = _fraction_moved("bfloat16", "bf16", master_fp32=True)  # the 3B config's dtype, geo3d's path
    plain_bf16 = _fraction_moved("bfloat16", "no", master_fp32=False)  # what training did before
    assert reference > 0.5
    assert abs(geo3d - reference) < 0.03, (geo3d, reference)
    assert plain_bf16 < 0.5 * reference, (plain_bf16, reference)  # the check can fail: bf16 updates round away


def test_trainable_params_become_fp32_frozen_ones_keep_their_dtype():
    policy = _policy("bfloat16")
    apply_freeze(policy.module_groups(), ["vlm"])
    keep_trainable_fp32(policy, "bf16")
    assert {p.dtype for p in policy.vlm.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in policy.action_head.parameters()} == {torch.float32}
    for p in policy.vlm.model.model.language_model.parameters():
        p.requires_grad_(True)
    with pytest.raises(Geo3dError, match="model.vlm.dtype=float32"):
        keep_trainable_fp32(policy, "no")  # fp32 compute cannot run fp32 and bf16 weights side by side


def test_auto_precision_follows_the_compute_dtype_rule():
    want = "bf16" if resolve_compute_dtype("auto", "cpu") == "bfloat16" else "no"
    assert accelerate_precision("auto", "cpu") == want and accelerate_precision("auto", "cuda") == "bf16"
    assert accelerate_precision("no", "cuda") == "no"
    with pytest.raises(Geo3dError, match="train.mixed_precision"):
        accelerate_precision("bfloat16", "cpu")
    with inference_autocast("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu")
    with inference_autocast("no", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
