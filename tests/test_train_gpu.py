"""The gpu tier (`make test-gpu`, `pytest -m gpu`): stage 2 on CUDA. Skipped with a reason without CUDA (and in
sessions that do not select the tier: tests/conftest.py hides the GPUs from the CPU tiers).

- bf16 autocast + fp32 master weights move the VLM's weights like an fp32 reference (the CPU test, on CUDA)
- the DiT's SDPA attention equals an explicit softmax attention within bf16 tolerance (both attention designs)
- compressors and the whole policy give the same output on CUDA as on CPU (fp32; bf16 autocast within bf16)
- a checkpoint trained on CUDA loads and predicts on CPU, one trained on CPU on CUDA, with the same actions
- `geo3d train --resume` on CUDA continues with the uninterrupted run's losses (within bf16 tolerance: the
  attention kernels' backward is not bit-deterministic on GPUs)
- `geo3d train` + `geo3d serve` on CUDA end to end
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from omegaconf import OmegaConf
from test_model_policy import make_batch, tiny_cfg

from geo3d.evaluation.client import RemotePolicy
from geo3d.policy.configuration_policy import COMPRESSOR_TYPES
from geo3d.policy.dit import Attention
from geo3d.policy.modeling_policy import build_policy
from geo3d.policy.precision import keep_trainable_fp32
from geo3d.policy.pretrained import Policy
from geo3d.policy.run_dir import read_metrics

from helpers import spawn_geo3d
from train_fixtures import make_train_data, train_args

DEVICE = "cuda"


def _why_skipped() -> str:
    hidden = os.environ.get("GEO3D_TEST_HIDDEN_GPUS")
    if hidden is not None and (hidden not in ("", "<unset>") or Path("/dev/nvidia0").exists()):
        return "GPUs hidden from the CPU tiers (tests/conftest.py): run `make test-gpu` (pytest -m gpu)"
    return "needs CUDA (no GPU visible)"


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=_why_skipped())]


def _on(batch: dict, device: str) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _fraction_moved(vlm_dtype: str, precision: str, master_fp32: bool) -> float:
    """One accelerate step on CUDA (prepare, autocast forward, backward, AdamW at lr 1e-5) of the tiny policy."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    cfg = tiny_cfg("mean")
    OmegaConf.update(cfg, "model.vlm.dtype", vlm_dtype)
    torch.manual_seed(0)
    policy = build_policy(cfg.model, device=DEVICE)
    if master_fp32:
        keep_trainable_fp32(policy, precision)
    acc = Accelerator(mixed_precision=precision, cpu=DEVICE == "cpu")
    vlm = list(policy.vlm.parameters())
    before = [p.detach().clone() for p in vlm]
    model, optimizer = acc.prepare(policy, torch.optim.AdamW(policy.parameters(), lr=1e-5, weight_decay=0.0))
    torch.manual_seed(1)
    acc.backward(model(_on(make_batch(policy), DEVICE)).loss)
    optimizer.step()
    moved = sum(int((p.detach() != b).sum()) for p, b in zip(vlm, before))
    AcceleratorState._reset_state(True)
    return moved / sum(p.numel() for p in vlm)


def test_bf16_autocast_with_fp32_masters_moves_weights_like_fp32_on_cuda():
    reference = _fraction_moved("float32", "no", master_fp32=False)
    geo3d = _fraction_moved("bfloat16", "bf16", master_fp32=True)
    assert reference > 0.5 and geo3d > 0.8 * reference, (reference, geo3d)


@pytest.mark.parametrize("joint", [True, False])
def test_sdpa_dit_attention_equals_explicit_attention_in_bf16(joint):
    torch.manual_seed(0)
    attn = Attention(hidden=256, heads=4, head_dim=64, dropout=0.0, joint=joint).to(DEVICE).eval()
    b, r, length, s = 2, 3, 9, 20
    x, context = torch.randn(b * r, length, 256, device=DEVICE), torch.randn(b, s, 256, device=DEVICE)
    mask = torch.ones(b, s, dtype=torch.bool, device=DEVICE)
    mask[1, -5:] = False
    self_mask = torch.ones(b * r, length, dtype=torch.bool, device=DEVICE)
    with torch.no_grad():
        ref = _explicit_attention(attn, x, context, mask, self_mask, b)
        with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
            out, _ = attn(x, attn.context_kv(context, mask), self_mask, slice(0, 0), False)
    err = (out.float() - ref).norm() / ref.norm()
    assert err < 1e-2, float(err)


def _explicit_attention(attn, x, context, mask, self_mask, b):
    """softmax(q k^T / sqrt(d)) v in fp32 with the same keys (context ‖ own tokens when joint) and masks."""
    n = x.shape[0]
    q = attn._split(attn.to_q(x))
    k, v = attn._split(attn.to_k(context)).repeat_interleave(n // b, 0), \
        attn._split(attn.to_v(context)).repeat_interleave(n // b, 0)
    keep = mask.repeat_interleave(n // b, 0)
    if attn.joint:
        k, v = torch.cat([k, attn._split(attn.to_k(x))], 2), torch.cat([v, attn._split(attn.to_v(x))], 2)
        keep = torch.cat([keep, self_mask], 1)
    scores = (q @ k.transpose(-1, -2)) * attn.head_dim ** -0.5
    probs = scores.masked_fill(~keep[:, None, None, :], float("-inf")).softmax(-1)
    return attn.to_out((probs @ v).transpose(1, 2).flatten(-2))


@pytest.mark.parametrize("kind", COMPRESSOR_TYPES)
def test_policy_and_compressors_give_the_same_output_on_cuda_as_on_cpu(kind):
    torch.manual_seed(0)
    policy = build_policy(tiny_cfg(kind).model).eval()
    batch = make_batch(policy)
    want = policy.predict_action(batch, generator=torch.Generator().manual_seed(3))
    geometry = batch["geometry"].float()
    want_geo = policy.compressor(geometry) if policy.compressor is not None else []
    policy.to(DEVICE)
    got = policy.predict_action(_on(batch, DEVICE), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(got.cpu(), want, rtol=1e-3, atol=1e-3), float((got.cpu() - want).abs().max())
    if policy.compressor is not None:
        got_geo = policy.compressor(geometry.to(DEVICE))
        for a, b in zip(got_geo, want_geo, strict=True):
            assert torch.allclose(a.detach().cpu(), b.detach(), rtol=1e-3, atol=1e-4)
    with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
        bf16 = policy.predict_action(_on(batch, DEVICE), generator=torch.Generator().manual_seed(3))
    assert (bf16.float().cpu() - want).norm() / want.norm() < 5e-2


@pytest.fixture(scope="module")
def data_store(tmp_path_factory):
    return make_train_data(tmp_path_factory.mktemp("gpu"))


def _predict(run_dir, device: str) -> np.ndarray:
    policy = Policy.from_pretrained(run_dir, device=device)
    g = policy.config.model.geometry
    images = np.random.default_rng(0).integers(0, 255, (2, policy.image_size, policy.image_size, 3), np.uint8)
    geometry = torch.randn(int(g.views), int(g.tokens_per_view), int(g.dim), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(5)  # the Euler noise is drawn on the CPU generator, then moved: the same on both devices
    return policy.predict_action(images, "put the bowl on the plate", np.zeros(8, np.float32), geometry=geometry)


def test_checkpoints_move_between_cuda_and_cpu(data_store, tmp_path):
    data, store = data_store
    for where, env in (("cuda", None), ("cpu", {"CUDA_VISIBLE_DEVICES": ""})):
        out = tmp_path / where
        r = spawn_geo3d(train_args(data, store, out, "qformer", 2, "train.save_interval=2"), env=env, expect=None)
        assert r.returncode == 0, r.stderr[-3000:]
        on_cpu, on_cuda = _predict(out, "cpu"), _predict(out, DEVICE)
        assert on_cpu.shape == on_cuda.shape == (8, 7) and np.isfinite(on_cuda).all()
        assert np.allclose(on_cpu, on_cuda, rtol=5e-2, atol=5e-2), (where, np.abs(on_cpu - on_cuda).max())


def test_resume_on_cuda_matches_the_uninterrupted_losses_within_bf16(data_store, tmp_path):
    data, store = data_store
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    extra = ("train.save_interval=4", "model.action_head.dropout=0.0")
    assert spawn_geo3d(train_args(data, store, ref, "qformer", 8, *extra), expect=None).returncode == 0
    assert spawn_geo3d(train_args(data, store, cut, "qformer", 4, *extra), expect=None).returncode == 0
    r = spawn_geo3d(train_args(data, store, cut, "qformer", 8, *extra, "--resume"), expect=None)
    assert r.returncode == 0, r.stderr[-3000:]
    want, got = [x["loss"] for x in read_metrics(ref)], [x["loss"] for x in read_metrics(cut)]
    assert [x["step"] for x in read_metrics(cut)] == list(range(1, 9))
    assert np.allclose(got, want, rtol=3e-2, atol=1e-3), (got, want)


def test_train_and_serve_end_to_end_on_cuda(data_store, tmp_path):
    from eval_fixtures import ServeProcess
    data, store = data_store
    out = tmp_path / "run"
    r = spawn_geo3d(train_args(data, store, out, "none", 2, "train.save_interval=2"), expect=None)
    assert r.returncode == 0, r.stderr[-3000:]
    server = ServeProcess(out)  # serve.device auto: the GPU this session sees
    try:
        client = RemotePolicy(server.url)
        images = np.zeros((2, int(client.image_size), int(client.image_size), 3), np.uint8)
        actions = client.predict_action(images, "put the bowl on the plate", np.zeros(8, np.float32))
        assert actions.shape == (8, 7) and np.isfinite(actions).all()
    finally:
        server.stop()
