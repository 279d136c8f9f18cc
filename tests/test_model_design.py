"""The design switches that reproduce the public fork beside geo3d's own choices (train/README.md, "Design
presets"): DiT attention cross | cross+self (through SDPA, geometry mass only when asked), the state token,
the prompt template, the fork's head width (977.75M), camera-respecting geometry groups, gradient
checkpointing, and the presets that set them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from geo3d.core.config import CONFIG_DIR, PACKAGE_ROOT, ConfigError
from geo3d.policy.action_head import FlowMatchingHead
from geo3d.policy.compressors import build_compressor, group_mean
from geo3d.policy.configuration_policy import PolicyConfig
from geo3d.policy.dit import Attention
from geo3d.policy.processor_policy import PolicyProcessor, VLMInputs
from geo3d.policy.vlm import QwenVLBackbone, vlm_source_dir
from geo3d.train.run_config import compose_train_config

# The fork's `datasets.vla_data.CoT_prompt`, quoted from its configs (e.g. starVLA/config/training/
# starvla_cotrain_libero.yaml on branch inject_geo_to_action_head).
FORK_COT = ("Your task is {instruction}. To identify the key objects for your task. Locate their bounding boxes "
            "in [x1,y1,x2,y2] format.")


@pytest.fixture(autouse=True)
def _tiny_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GEO3D_CACHE", str(tmp_path_factory.getbasetemp() / "geo3d_cache"))


def tiny(*overrides: str) -> PolicyConfig:
    return PolicyConfig.from_cfg(compose_train_config(overrides=["model_config=tiny", *overrides]))


def head_and_inputs(attention: str, use_state: bool = True, r: int = 2):
    """A tiny head (dropout 0) with one context per layer and a noisy action chunk for B=2 rows x R repeats."""
    cfg = tiny(f"model.action_head.attention={attention}", f"model.action_head.use_state={use_state}",
               "model.action_head.dropout=0.0").action_head
    torch.manual_seed(0)
    head = FlowMatchingHead(cfg).eval()
    b, s = 2, 5
    ctx = head.dit.context_kv([torch.randn(b, s, cfg.hidden) for _ in range(cfg.num_layers)],
                              torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool))
    x = torch.randn(b * r, cfg.horizon, cfg.action_dim)
    t = torch.full((b * r,), 0.3)
    state = torch.randn(b * r, cfg.state_dim)
    keep = torch.ones(b * r, cfg.horizon, dtype=torch.bool)
    return head, ctx, x, t, state, keep


@pytest.mark.parametrize("attention", ["cross", "cross+self"])
def test_cross_attention_keeps_head_tokens_apart_and_joint_attention_does_not(attention):
    head, ctx, x, t, state, keep = head_and_inputs(attention)
    base, _ = head.velocity(x, t, state, ctx, keep, slice(3, 5))
    moved = x.clone()
    moved[:, 2] += 1.0  # one noisy action step
    out, _ = head.velocity(moved, t, state, ctx, keep, slice(3, 5))
    others = [i for i in range(x.shape[1]) if i != 2]
    new_state, _ = head.velocity(x, t, state + 1.0, ctx, keep, slice(3, 5))
    assert not torch.allclose(out[:, 2], base[:, 2])
    if attention == "cross":  # the fork: tokens never see each other, so even the state token cannot act
        assert torch.allclose(out[:, others], base[:, others], atol=1e-6)
        assert torch.allclose(new_state, base, atol=1e-6)
    else:
        assert not torch.allclose(out[:, others], base[:, others], atol=1e-4)
        assert not torch.allclose(new_state, base, atol=1e-4)


@pytest.mark.parametrize("joint", [False, True])
def test_sdpa_attention_and_geometry_mass_equal_an_explicit_softmax(joint):
    torch.manual_seed(1)
    att = Attention(hidden=32, heads=2, head_dim=16, dropout=0.0, joint=joint)
    b, r, length, s = 2, 3, 4, 6
    context, x = torch.randn(b, s, 32), torch.randn(b * r, length, 32)
    mask = torch.ones(b, s, dtype=torch.bool)
    mask[0, 0] = False  # a padded VL token is never attended
    self_mask = torch.ones(b * r, length, dtype=torch.bool)
    self_mask[:, -1] = False  # a padded action step
    geom = slice(4, 6)
    out, mass = att(x, att.context_kv(context, mask), self_mask, geom, want_mass=True)
    _, none = att(x, att.context_kv(context, mask), self_mask, geom, want_mass=False)

    ctx_rep = context.repeat_interleave(r, 0)
    keys = torch.cat([ctx_rep, x], 1) if joint else ctx_rep
    keep = torch.cat([mask.repeat_interleave(r, 0), self_mask], 1) if joint else mask.repeat_interleave(r, 0)
    q, k, v = (att._split(f(z)) for f, z in ((att.to_q, x), (att.to_k, keys), (att.to_v, keys)))
    scores = (q @ k.transpose(-1, -2)) / 4.0  # sqrt(head_dim)
    probs = scores.masked_fill(~keep[:, None, None], float("-inf")).softmax(-1)
    ref = att.to_out((probs @ v).transpose(1, 2).flatten(-2))
    assert torch.allclose(out, ref, atol=1e-5)
    assert none is None
    assert float(mass) == pytest.approx(float(probs[..., geom].sum(-1).mean().detach()), abs=1e-6)
    assert float(probs[:1, ..., 0].detach().abs().max()) == 0.0  # the padded key got no weight


def test_geometry_mass_is_only_computed_when_asked(monkeypatch):
    calls = []
    original = Attention._geometry_mass
    monkeypatch.setattr(Attention, "_geometry_mass", lambda self, *a: calls.append(1) or original(self, *a))
    head, ctx, x, t, state, keep = head_and_inputs("cross+self")
    actions, pad = torch.rand(2, 8, 7), torch.zeros(2, 8, dtype=torch.bool)
    loss, mass = head.loss(ctx, state[:2], actions, pad, slice(3, 5))
    assert mass is None and not calls and torch.isfinite(loss)
    _, mass = head.loss(ctx, state[:2], actions, pad, slice(3, 5), want_mass=True)
    assert mass.shape == (head.cfg.num_layers,) and len(calls) == head.cfg.num_layers


def test_state_off_drops_the_token_and_freezes_the_unused_encoder():
    head, ctx, x, t, _, keep = head_and_inputs("cross+self", use_state=False)
    assert head.num_prefix_tokens == head.cfg.num_future_tokens
    assert not any(p.requires_grad for p in head.state_encoder.parameters())  # no optimizer state, no DDP error
    out, _ = head.velocity(x, t, None, ctx, keep, slice(3, 5))
    assert out.shape == x.shape
    assert head.sample(ctx, None, slice(3, 5), num_steps=2).shape == (2, 8, 7)


def test_prompt_template_wraps_the_instruction_like_the_fork(tmp_path_factory):
    stats = {f: {k: [0.0] * 8 if k in ("min", "mean") else [1.0] * 8 for k in ("min", "max", "mean", "std")}
             for f in ("action", "state")}
    def vlm_inputs(model_cfg):
        return PolicyProcessor.for_training(vlm_source_dir(PolicyConfig.from_cfg(model_cfg).vlm), model_cfg,
                                            stats).vlm_inputs

    fork = vlm_inputs(compose_train_config(overrides=["model_config=tiny", "preset=fork"]).model)
    assert fork.template == FORK_COT
    text = fork.prompt("pick up the black bowl", num_views=2)
    assert "Your task is pick up the black bowl. To identify the key objects for your task." in text
    assert text.count("<|image_pad|>") == 2 and text.index("<|vision_end|>") < text.index("Your task is")
    raw = vlm_inputs(compose_train_config(overrides=["model_config=tiny"]).model)
    assert "Your task" not in raw.prompt("pick up the black bowl", 2) and raw.template == "{instruction}"
    images = np.zeros((1, 2, 56, 56, 3), dtype=np.uint8)
    assert fork(images, ["x"])["input_ids"].shape[1] > raw(images, ["x"])["input_ids"].shape[1]


def test_fork_head_counts_977_75m_exactly_on_the_meta_device():
    cfg = compose_train_config([CONFIG_DIR / "train" / "ablation_qformer.yaml"])
    pc = PolicyConfig.from_cfg(cfg)
    assert (pc.action_head.output_dim, pc.action_head.position_rows, pc.action_head.state_dim) == (2560, 1024, 7)
    with torch.device("meta"):
        head = FlowMatchingHead(pc.action_head)
        compressor = build_compressor(pc, hidden=2048)
    assert head.future_tokens.is_meta
    assert sum(p.numel() for p in head.parameters()) == 977_748_487
    assert tuple(head.dit.proj_out_2.weight.shape) == (2560, 2048)
    assert tuple(head.action_decoder.layer1.weight.shape) == (1024, 2560)
    assert tuple(head.position_embedding.shape) == (1024, 2048)
    assert round(sum(p.numel() for p in compressor.parameters()) / 1e6, 2) == 19.97


def test_flat_groups_mix_the_cameras_at_392_tokens_and_per_view_groups_never_do():
    views = torch.cat([torch.zeros(1, 196, 1), torch.ones(1, 196, 1)], dim=1)  # agentview 0, wrist 1
    flat = group_mean(views, 16).flatten()
    assert float(flat[8]) == pytest.approx(20 / 24)  # tokens 192..215: 4 agentview + 20 wrist
    per_view = group_mean(views, 16, views=2).flatten()
    assert torch.equal(per_view, torch.tensor([0.0] * 8 + [1.0] * 8))
    cfg = tiny("model.compressor.grouping=flat")
    assert build_compressor(cfg, 128).views == 1 and build_compressor(tiny(), 128).views == 2
    with pytest.raises(Exception, match="divisible by model.geometry.views"):
        tiny("model.compressor.num_tokens=15")


def _count_calls(modules) -> list[int]:
    calls = [0]
    for m in modules:
        m.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_dit_gradient_checkpointing_recomputes_blocks_with_equal_gradients():
    grads, calls = {}, {}
    for on in (False, True):
        cfg = tiny("model.action_head.dropout=0.0", f"model.action_head.gradient_checkpointing={on}").action_head
        torch.manual_seed(0)
        head = FlowMatchingHead(cfg)
        counter = _count_calls(head.dit.blocks)
        ctx = head.dit.context_kv([torch.randn(2, 5, cfg.hidden) for _ in range(cfg.num_layers)],
                                  torch.ones(2, 5, dtype=torch.bool))
        torch.manual_seed(1)
        loss, _ = head.loss(ctx, torch.randn(2, cfg.state_dim), torch.rand(2, 8, 7),
                            torch.zeros(2, 8, dtype=torch.bool), slice(0, 0))
        loss.backward()
        grads[on], calls[on] = [p.grad.clone() for p in head.parameters() if p.grad is not None], counter[0]
    assert calls[False] == 4 and calls[True] == 8  # each of the 4 blocks runs again in backward
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads[False], grads[True], strict=True))


def test_vlm_gradient_checkpointing_recomputes_decoder_layers_with_equal_gradients():
    grads, calls = {}, {}
    for on in (False, True):
        vlm = QwenVLBackbone.build(tiny(f"model.vlm.gradient_checkpointing={on}").vlm).train()
        layers = vlm.model.model.language_model.layers
        counter = _count_calls(layer.mlp for layer in layers)  # inside the checkpointed forward
        proc = VLMInputs.from_dir(vlm.model_dir)
        inputs = proc(np.full((1, 2, 56, 56, 3), 100, dtype=np.uint8), ["open the drawer"])
        sum(h.square().mean() for h in vlm(inputs, 2)).backward()
        grads[on], calls[on] = [p.grad.clone() for p in layers.parameters()], counter[0]
    assert calls[True] == 2 * calls[False] == 2 * len(layers)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads[False], grads[True], strict=True))


def test_presets_set_the_fork_design_and_default_to_geo3d():
    fork = compose_train_config([CONFIG_DIR / "train" / "ablation_pool.yaml"])
    own = compose_train_config([CONFIG_DIR / "train" / "ablation_pool.yaml"], overrides=["preset=geo3d"])
    f, g = PolicyConfig.from_cfg(fork), PolicyConfig.from_cfg(own)
    assert fork.preset == "fork" and own.preset == "geo3d"
    assert (f.action_head.attention, f.action_head.use_state, f.compressor.grouping) == ("cross", False, "flat")
    assert f.vlm.prompt_template == FORK_COT
    assert (g.action_head.attention, g.action_head.use_state, g.compressor.grouping) == ("cross+self", True, "per_view")
    assert (g.vlm.prompt_template, g.action_head.output_dim, g.action_head.position_rows) == ("{instruction}", None, None)
    assert compose_train_config().preset == "geo3d"
    for name in ("none", "mean", "per_layer", "qformer"):
        assert compose_train_config([CONFIG_DIR / "train" / f"ablation_{name}.yaml"]).preset == "fork"
    with pytest.raises(ConfigError, match=r"preset='gr00t'.*known: \['fork', 'geo3d'\]"):
        compose_train_config(overrides=["preset=gr00t"])
    with pytest.raises(Exception, match="attention='self' is not one of cross, cross\\+self"):
        tiny("model.action_head.attention=self")


def test_ablation_dry_run_prints_the_fork_sizes():
    from helpers import run_geo3d

    r = run_geo3d(["train", "--config", "configs/train/ablation_qformer.yaml", "--dry-run"], cwd=PACKAGE_ROOT)
    report = json.loads(r.stdout)
    assert report["preset"] == "fork"
    assert report["params_millions"]["action_head"] == 977.75 and report["params_millions"]["compressor"] == 19.97
    assert report["params"]["action_head"]["total"] == 977_748_487
    # the state encoder (state_dim 7 -> 1024 -> 2048) is built as in the fork but never fed: frozen
    frozen = 7 * 1024 + 1024 + 1024 * 2048 + 2048
    assert report["params"]["action_head"]["trainable"] == 977_748_487 - frozen
