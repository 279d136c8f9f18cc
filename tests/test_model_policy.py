"""The tiny policy end to end: every compressor trains and predicts through the one forward/predict path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from geo3d.core.config import CONFIG_DIR
from geo3d.core.errors import Geo3dError
from geo3d.policy.action_head import FlowMatchingHead
from geo3d.policy.configuration_policy import COMPRESSOR_TYPES, PolicyConfig
from geo3d.policy.modeling_policy import GeoVLAPolicy, build_policy
from geo3d.policy.processor_policy import VLMInputs
from geo3d.policy.vlm import PatchProjection

B = 2


def tiny_cfg(compressor: str = "pool", **head):
    cfg = OmegaConf.load(CONFIG_DIR / "model" / "tiny.yaml")
    OmegaConf.update(cfg, "model.compressor.type", compressor, force_add=True)  # on top of the YAML
    for k, v in head.items():
        OmegaConf.update(cfg, f"model.action_head.{k}", v, force_add=True)
    return cfg


def make_batch(policy: GeoVLAPolicy, seed: int = 0, size: int = 56) -> dict:
    """Processor output for B image pairs + instructions, plus geometry/state/actions (one row padded)."""
    g = np.random.default_rng(seed)
    images = g.integers(0, 256, (B, 2, size, size, 3), dtype=np.uint8)
    batch = VLMInputs.from_dir(policy.vlm.model_dir)(images, ["pick up the black bowl",
                                                             "open the top drawer of the cabinet"])
    t = torch.Generator().manual_seed(seed)
    geo = policy.cfg.geometry
    pad = torch.zeros(B, 8, dtype=torch.bool)
    pad[1, 5:] = True
    batch.update(geometry=torch.randn(B, geo.views * geo.tokens_per_view, geo.dim, generator=t).bfloat16(),
                 state=torch.randn(B, 8, generator=t), actions=torch.rand(B, 8, 7, generator=t) * 2 - 1,
                 action_pad=pad)
    return batch


def seeded_loss(policy: GeoVLAPolicy, batch: dict, seed: int = 123):
    torch.manual_seed(seed)
    return policy(batch)


@pytest.mark.parametrize("kind", COMPRESSOR_TYPES)
def test_forward_backward_predict_every_compressor(kind):
    torch.manual_seed(0)
    policy = build_policy(tiny_cfg(kind))
    batch = make_batch(policy)
    assert policy(batch).geom_attention_mass is None  # measured only when asked (the trainer's logging steps)
    out = policy(batch, attention_mass=True)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    mass = out.geom_attention_mass
    assert mass.shape == (4,) and not mass.requires_grad
    assert bool(((mass >= 0) & (mass <= 1)).all())
    if kind == "none":
        assert policy.compressor is None and set(policy.module_groups()) == {"vlm", "action_head"}
        assert torch.count_nonzero(mass) == 0
    else:
        assert set(policy.module_groups()) == {"vlm", "compressor", "action_head"}
        assert bool((mass > 0).all())
        for name, p in policy.compressor.named_parameters():
            assert p.grad is not None and torch.count_nonzero(p.grad) > 0, f"no gradient reaches {name}"
    vlm_grads = [p.grad for p in policy.vlm.model.model.language_model.layers[-1].parameters()]
    assert all(g is not None for g in vlm_grads)
    actions = policy.predict_action(batch)
    assert actions.shape == (B, 8, 7) and torch.isfinite(actions).all()
    assert policy.training  # predict_action restores the mode it found


def test_none_ignores_geometry():
    policy = build_policy(tiny_cfg("none"))
    batch = make_batch(policy)
    base = seeded_loss(policy, batch).loss
    batch["geometry"] = torch.randn_like(batch["geometry"].float()).bfloat16()
    assert torch.equal(seeded_loss(policy, batch).loss, base)
    batch.pop("geometry")
    assert torch.equal(seeded_loss(policy, batch).loss, base)


def test_geometry_changes_the_loss_when_used():
    policy = build_policy(tiny_cfg("qformer"))
    batch = make_batch(policy)
    base = seeded_loss(policy, batch).loss
    batch["geometry"] = torch.randn_like(batch["geometry"].float()).bfloat16()
    assert not torch.equal(seeded_loss(policy, batch).loss, base)
    with pytest.raises(Geo3dError, match="needs batch\\['geometry'\\]"):
        policy({k: v for k, v in batch.items() if k != "geometry"})
    with pytest.raises(Geo3dError, match="model.geometry expects"):
        policy({**batch, "geometry": batch["geometry"][:, :100]})


def test_pad_mask_masks_targets():
    """Padded target steps change neither the loss nor anything the real steps attend to."""
    policy = build_policy(tiny_cfg("pool"))
    batch = make_batch(policy)
    base = seeded_loss(policy, batch).loss
    batch["actions"][1, 5:] = torch.randn(3, 7) * 5
    assert torch.equal(seeded_loss(policy, batch).loss, base)
    batch["actions"][1, 2] += 1.0  # a real step: the loss must notice
    assert not torch.equal(seeded_loss(policy, batch).loss, base)


def test_predict_action_is_deterministic_under_a_seed():
    policy = build_policy(tiny_cfg("per_layer"))
    batch = make_batch(policy)
    a = policy.predict_action(batch, generator=torch.Generator().manual_seed(7))
    b = policy.predict_action(batch, generator=torch.Generator().manual_seed(7))
    c = policy.predict_action(batch, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(3)
    d = policy.predict_action(batch, num_steps=2)
    torch.manual_seed(3)
    assert torch.equal(d, policy.predict_action(batch, num_steps=2))


def test_cached_context_equals_recomputed_context():
    """The R repeats share one context K/V: the loss equals running the repeated batch with R=1."""
    policy = build_policy(tiny_cfg("pool", dropout=0.0, repeats=3))
    batch = make_batch(policy)
    shared = seeded_loss(policy, batch).loss
    flat = build_policy(tiny_cfg("pool", dropout=0.0, repeats=1))
    flat.load_state_dict(policy.state_dict())
    rep = {k: v for k, v in make_batch(flat).items()}
    images = np.repeat(np.random.default_rng(0).integers(0, 256, (B, 2, 56, 56, 3), dtype=np.uint8), 3, axis=0)
    rep.update(VLMInputs.from_dir(flat.vlm.model_dir)(images, [s for s in ["pick up the black bowl",
                                                                           "open the top drawer of the cabinet"]
                                                               for _ in range(3)]))
    for key in ("geometry", "state", "actions", "action_pad"):
        rep[key] = batch[key].repeat_interleave(3, 0)
    torch.manual_seed(123)
    assert torch.allclose(flat(rep).loss, shared, rtol=1e-5, atol=1e-6)


def test_tiny_layer_mapping_is_the_last_n_hidden_states():
    policy = build_policy(tiny_cfg("none"))
    batch = make_batch(policy)
    keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
    with torch.no_grad():
        ref = policy.vlm.model.model(**{k: batch[k] for k in keys}, output_hidden_states=True).hidden_states
        got = policy.vlm(batch, 4)
    assert len(ref) == 5 and len(got) == 4  # embeddings + 4 decoder layers; DiT block i reads layer i+1
    for g, r in zip(got, ref[1:]):
        assert torch.equal(g, r)
    with pytest.raises(Geo3dError, match="exceeds the VLM's 5 hidden states"):
        build_policy(tiny_cfg("none", num_layers=6))


def test_tiny_build_is_seeded():
    a, b = build_policy(tiny_cfg("pool")), build_policy(tiny_cfg("pool"))
    for (name, pa), pb in zip(a.vlm.state_dict().items(), b.vlm.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_config_errors_name_the_valid_choices():
    with pytest.raises(Geo3dError, match="valid: none, mean, pool, per_layer, qformer"):
        build_policy(tiny_cfg("kmeans"))
    cfg = tiny_cfg("pool")
    cfg.model.action_head.num_layer = 3
    with pytest.raises(Geo3dError, match="unknown key\\(s\\) \\['num_layer'\\] in model.action_head"):
        build_policy(cfg)


def test_missing_or_incomplete_vlm_dir_is_a_clear_error(tmp_path):
    cfg = tiny_cfg("pool")
    cfg.model.vlm.source = str(tmp_path / "Qwen2.5-VL-3B-Instruct")
    with pytest.raises(Geo3dError, match="checkpoint dir not found: .*Qwen2.5-VL-3B-Instruct"):
        build_policy(cfg)
    (tmp_path / "Qwen2.5-VL-3B-Instruct").mkdir()
    (tmp_path / "Qwen2.5-VL-3B-Instruct" / "config.json").write_text("{}")
    with pytest.raises(Geo3dError, match="incomplete, missing: tokenizer.json, tokenizer_config.json, model weights"):
        build_policy(cfg)


def test_local_checkpoint_dir_loads_offline_like_the_3b(tmp_path):
    """The real-model path (from_pretrained, local_files_only) on a dir in the HF layout: same weights back."""
    tiny = build_policy(tiny_cfg("pool"))
    ckpt = tmp_path / "qwen_local"
    tiny.vlm.model.save_pretrained(ckpt)
    VLMInputs.from_dir(tiny.vlm.model_dir).hf.save_pretrained(ckpt)
    cfg = tiny_cfg("pool")
    cfg.model.vlm.source = str(ckpt)
    loaded = build_policy(cfg)
    assert loaded.vlm.model_dir == ckpt
    for (name, a), b in zip(tiny.vlm.state_dict().items(), loaded.vlm.state_dict().values()):
        assert torch.equal(a, b), name
    batch = make_batch(loaded)
    assert torch.equal(batch["input_ids"], make_batch(tiny)["input_ids"])
    assert torch.isfinite(loaded(batch).loss)
    meta = build_policy(cfg, meta=True)  # reads the dir's config.json, no weights
    assert meta.param_counts()["vlm"] == tiny.param_counts()["vlm"]


def test_config_value_types_are_checked():
    cfg = tiny_cfg("pool")
    cfg.model.compressor.num_tokens = "sixteen"
    with pytest.raises(Geo3dError, match="model.compressor.num_tokens must be int"):
        build_policy(cfg)


def test_flow_matching_path_target_time_and_euler_direction(monkeypatch):
    """The head's math, with the network replaced by the exact velocity of the straight path from noise to the
    action: x_t = (1-t)*noise + t*action and target action - noise give zero loss (the opposite sign does not),
    padded steps do not count, t skews to the noisy end (t = (s_max - s)/s_max, s ~ Beta(1.5, 1)), and the Euler
    sampler integrates from noise (t=0) to the action (t=1)."""
    head = FlowMatchingHead(PolicyConfig.from_cfg(tiny_cfg()).action_head)
    torch.manual_seed(0)
    t = head.sample_t(20000, "cpu")
    assert -0.001 <= float(t.min()) and float(t.max()) <= 1  # s > 0.999 gives t < 0 (GR00T's formula, as specified)
    assert abs(float(t.mean()) - (1 - 0.6 / 0.999)) < 0.01  # E[s] = 1.5 / 2.5
    assert float((t < 0.5).float().mean()) > 0.6  # P(s > 0.4995) = 1 - 0.4995**1.5 = 0.647

    g = torch.Generator().manual_seed(1)
    actions, state = torch.rand(B, 8, 7, generator=g) * 2 - 1, torch.randn(B, 8, generator=g)
    pad = torch.zeros(B, 8, dtype=torch.bool)
    pad[1, 5:] = True
    target = actions.repeat_interleave(head.cfg.repeats, 0)
    sign = {"value": 1.0}

    def oracle(x_t, t, state, ctx, keep, geom_slice, want_mass=False):
        v = (target - x_t) / (1 - t)[:, None, None]  # = action - noise on the path above
        wrong_on_pads = torch.where(keep[..., None], v, v + 100.0)
        return sign["value"] * wrong_on_pads, torch.zeros(head.cfg.num_layers)

    monkeypatch.setattr(head, "velocity", oracle)
    loss, _ = head.loss(None, state, actions, pad, slice(0, 0))
    assert float(loss) < 1e-6
    sign["value"] = -1.0
    assert float(head.loss(None, state, actions, pad, slice(0, 0))[0]) > 0.1
    sign["value"], target = 1.0, actions  # sampling: no repeats
    sampled = head.sample(None, state, slice(0, 0), num_steps=4, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(sampled, actions, atol=1e-5)


def test_patch_embed_matmul_equals_transformers_conv3d():
    """`model.vlm.patch_embed=matmul` (the default) computes what Qwen2.5-VL's own Conv3d computes, from the same
    weight under the same state_dict key, for the hidden states and for the weight's gradient."""
    torch.manual_seed(0)
    conv_cfg = tiny_cfg("none")
    OmegaConf.update(conv_cfg, "model.vlm.patch_embed", "conv3d", force_add=True)
    conv_policy, mm_policy = build_policy(conv_cfg), build_policy(tiny_cfg("none"))
    assert isinstance(conv_policy.vlm.model.model.visual.patch_embed.proj, torch.nn.Conv3d)
    assert isinstance(mm_policy.vlm.model.model.visual.patch_embed.proj, PatchProjection)
    assert conv_policy.vlm.state_dict().keys() == mm_policy.vlm.state_dict().keys()
    mm_policy.vlm.load_state_dict(conv_policy.vlm.state_dict())
    batch = make_batch(conv_policy, size=112)
    outs, grads = [], []
    for policy in (conv_policy, mm_policy):
        hidden = policy.vlm(batch, 4)
        torch.stack([h.square().mean() for h in hidden]).sum().backward()
        outs.append(torch.stack(hidden))
        grads.append(policy.vlm.model.model.visual.patch_embed.proj.weight.grad)
    assert outs[0].abs().max() > 0.1 and grads[0].abs().max() > 0
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)
