"""The tiny encoder: seeded and deterministic, MapAnything's data path, views encoded together."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from omegaconf import OmegaConf

import geo3d.encoders.tiny as tiny
from geo3d.core.config import CONFIG_DIR
from geo3d.core.errors import Geo3dError, StoreError
from geo3d.encoders.recompute import encoder_from_record
from geo3d.encoders.tiny import TinyEncoder
from geo3d.encoders.tiny_model import TinyGeometryModel

SMALL = dict(width=32, depth=2, heads=2, out_dim=24, seed=0, image_size=56, tokens_per_view=4)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 2, 56, 56, 3), generator=g, dtype=torch.uint8)


def test_output_shape_dtype_and_identity():
    enc = TinyEncoder(**SMALL)
    out = enc.encode(_images(3))
    assert out.shape == (3, 2, 4, 24) and out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all() and out.float().std() > 0.1
    ident = enc.identity()
    assert ident["name"] == "tiny" and ident["fingerprint"].startswith("sha256:")
    assert ident["config"]["seed"] == 0 and enc.preprocessing()["patch_grid"] == [4, 4]


def test_same_seed_same_bytes_other_seed_other_model():
    a, b = TinyEncoder(**SMALL), TinyEncoder(**SMALL)
    c = TinyEncoder(**{**SMALL, "seed": 1})
    x = _images(2)
    assert a.identity() == b.identity() and torch.equal(a.encode(x), b.encode(x))
    assert c.identity()["fingerprint"] != a.identity()["fingerprint"]
    assert not torch.equal(a.encode(x), c.encode(x))


def test_frame_tokens_do_not_depend_on_the_batch():
    enc, x = TinyEncoder(**SMALL), _images(5)
    full = enc.encode(x)
    assert torch.equal(full[2:3], enc.encode(x[2:3]))
    assert torch.equal(full[1:4], enc.encode(x[1:4]))


def test_views_are_encoded_together_agentview_first():
    """Global attention: changing the wrist image changes the agentview tokens (and view order matters)."""
    enc, x = TinyEncoder(**SMALL), _images(1)
    y = x.clone()
    y[:, 1] = _images(1, seed=5)[:, 1]
    assert not torch.equal(enc.encode(x)[:, 0], enc.encode(y)[:, 0])
    swapped = enc.encode(x.flip(1))
    assert not torch.equal(swapped[:, 1], enc.encode(x)[:, 0])  # view 0 is the reference view


def test_bad_sizes_are_clear_errors():
    with pytest.raises(Geo3dError, match="multiple of the patch size 14"):
        TinyEncoder(**{**SMALL, "image_size": 60})
    with pytest.raises(Geo3dError, match="multiples of heads"):
        TinyEncoder(**{**SMALL, "heads": 5})
    with pytest.raises(Geo3dError, match="square"):
        TinyEncoder(**{**SMALL, "tokens_per_view": 5})


def test_rebuilt_from_the_recorded_identity_gives_the_same_tokens():
    enc = TinyEncoder(**SMALL)
    again = encoder_from_record(enc.identity(), enc.preprocessing(), SMALL["tokens_per_view"], device="cpu")
    x = _images(2)
    assert torch.equal(again.encode(x), enc.encode(x))
    tampered = {**enc.identity(), "fingerprint": "sha256:0"}
    with pytest.raises(StoreError, match="encoder identity differs"):
        encoder_from_record(tampered, enc.preprocessing(), SMALL["tokens_per_view"], device="cpu")


def test_device_random_init_is_unhashed_and_never_rebuilt(monkeypatch):
    """The full-size benchmark stand-in: no seeded CPU init, no sha256; its identity says so and recompute /
    eval refuse to rebuild it."""
    monkeypatch.setattr(tiny, "state_dict_sha256", lambda m: pytest.fail("the stand-in's weights were hashed"))
    enc = TinyEncoder(**SMALL, init="device_random")
    ident = enc.identity()
    assert ident["fingerprint"].startswith("unhashed:") and ident["config"]["init"] == "device_random"
    out = enc.encode(_images(2))
    assert out.shape == (2, 2, 4, 24) and torch.isfinite(out.float()).all() and out.float().std() > 0.1
    with pytest.raises(StoreError, match="unhashed random weights.*cannot be recomputed"):
        encoder_from_record(enc.store_identity(), enc.preprocessing(), SMALL["tokens_per_view"], device="cpu")
    with pytest.raises(Geo3dError, match="encoder.tiny.init must be one of seeded, device_random"):
        TinyEncoder(**SMALL, init="zeros")


def test_seeded_identity_is_unchanged_and_the_store_identity_adds_the_runtime():
    enc = TinyEncoder(**SMALL)
    assert set(enc.identity()) == {"name", "tap", "fingerprint", "config", "compute_dtype"}  # old stores (no tap)
    # still attach: they read as info_sharing (geo3d.core.taps.tap_of)
    assert "init" not in enc.identity()["config"]
    rec = enc.store_identity()
    assert rec["runtime"]["device_type"] == "cpu" and {k: v for k, v in rec.items() if k != "runtime"} == enc.identity()
    other = {**rec, "runtime": {**rec["runtime"], "device_type": "cuda", "gpu": "H200"}}
    from geo3d.encoders.recompute import encoder_from_record  # the runtime is informational: rebuilt anyway

    assert encoder_from_record(other, enc.preprocessing(), SMALL["tokens_per_view"], device="cpu").identity() \
        == enc.identity()


def test_full_size_stand_in_has_mapanything_scale():
    """width 1536, depth 20, heads 24 (configs/standin_full.yaml): ~1.13B parameters (counted on the meta device)."""
    t = OmegaConf.load(CONFIG_DIR / "standin_full.yaml").encoder.tiny
    assert t.init == "device_random"
    with torch.device("meta"), mock_seeded_init():
        model = TinyGeometryModel(t.width, t.depth, t.heads, t.out_dim, seed=0)
    assert 1.10e9 < sum(p.numel() for p in model.parameters()) < 1.16e9


def mock_seeded_init():
    return mock.patch.object(TinyGeometryModel, "_seeded_init", lambda self, seed, device: None)
