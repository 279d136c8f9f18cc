"""The adapter against the REAL MapAnything package (a user's cluster; skipped with the reason elsewhere): a small
random-init `mapanything.models.MapAnything` (the real class, DINOv2 ViT-S/14 from the torch hub cache) is saved
as a weights dir, loaded by the adapter offline + strict, and its tokens must equal MapAnything's own `forward`
hooked at `info_sharing` (then pooled the same way) on two demo frames, exactly in fp32.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import math
import socket
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_model

from geo3d.core.errors import Geo3dError
from geo3d.data.mixture import LiberoMixture
from geo3d.encoders.mapanything import (
    MapAnythingEncoder,
    dinov2_hub_code_from_cache,
    dinov2_hub_dir,
    import_mapanything_class,
)
from geo3d.encoders.views import NORM_TYPES, frames_to_model_input, pool_view_features

INF = math.inf
# mapanything v1.1 configs/model/mapanything.yaml (images_only, dpt_pose_scale) composed, then shrunk: ViT-S/14 with
# 2 blocks, a 4-layer alternating-attention info_sharing of width 384, a 32-wide DPT.
DENSE = {"name": "raydirs+depth+pose+confidence+mask+scale", "ray_directions_mode": "linear",
         "ray_directions_normalize_to_unit_sphere": True, "ray_directions_normalize_to_unit_image_plane": False,
         "ray_directions_vmin": -INF, "ray_directions_vmax": INF, "ray_directions_clamp_min_of_z_dir": False,
         "ray_directions_z_dir_min": -INF, "depth_mode": "exp", "depth_vmin": 0, "depth_vmax": INF,
         "confidence_type": "exp", "confidence_vmin": 1, "confidence_vmax": INF}
POSE = {"name": "raydirs+depth+pose+confidence+mask+scale", "cam_trans_mode": "linear", "cam_trans_vmin": -INF,
        "cam_trans_vmax": INF, "quaternions_mode": "linear", "quaternions_normalize": True, "quaternions_vmin": -INF,
        "quaternions_vmax": INF}
SCALE = {"name": "raydirs+depth+pose+confidence+mask+scale", "mode": "exp", "vmin": 1e-08, "vmax": INF}
SMALL_CONFIG = {
    "name": "mapanything", "pretrained_checkpoint_path": None, "load_specific_pretrained_submodules": False,
    "specific_pretrained_submodules": [], "use_register_tokens_from_encoder": True,
    "info_sharing_mlp_layer_str": "swiglufused",
    "encoder_config": {"encoder_str": "dinov2", "name": "dinov2_small_2_layers", "data_norm_type": "dinov2",
                       "size": "small", "with_registers": False, "uses_torch_hub": True, "torch_hub_pretrained": False,
                       "gradient_checkpointing": False, "norm_returned_features": False, "keep_first_n_layers": 2},
    "info_sharing_config": {"model_type": "alternating_attention", "model_return_type": "intermediate_features",
                            "custom_positional_encoding": None,
                            "module_args": {"name": "aat_4_layers_ifr", "indices": [1, 2], "norm_intermediate": True,
                                            "size": "4_layers", "depth": 4, "distinguish_ref_and_non_ref_views": True,
                                            "gradient_checkpointing": False, "dim": 384, "num_heads": 6,
                                            "mlp_ratio": 4, "qkv_bias": True, "qk_norm": False, "init_values": 1e-5}},
    "pred_head_config": {
        "adaptor_config": {"input_dim": 6, "scene_rep_dim": 4, "type": "raydirs+depth+pose+confidence+mask",
                           "scene_rep_type": "raydirs+depth+pose", "dense_pred_init_dict": DENSE,
                           "pose_pred_init_dict": POSE, "scale_pred_init_dict": SCALE},
        "type": "dpt+pose", "feature_head": {"feature_dim": 32, "hooks": [0, 1, 2, 3], "checkpoint_gradient": False},
        "regressor_head": {"output_dim": 6, "checkpoint_gradient": False},
        "pose_head": {"num_resconv_block": 2, "rot_representation_dim": 4}, "scale_head": {"output_dim": 1},
        "adaptor_type": "raydirs+depth+pose+confidence+mask", "dpt_adaptor": DENSE, "pose_adaptor": POSE,
        "scale_adaptor": SCALE, "gradient_checkpointing": False},
    "geometric_input_config": {
        "ray_dirs_encoder_config": {"name": "ray_dirs_encoder", "in_chans": 3, "encoder_str": "dense_rep_encoder",
                                    "apply_pe": False},
        "depth_encoder_config": {"name": "depth_encoder", "in_chans": 1, "encoder_str": "dense_rep_encoder",
                                 "apply_pe": False},
        "cam_rot_encoder_config": {"name": "cam_rot_quats_encoder", "in_chans": 4, "encoder_str": "global_rep_encoder"},
        "cam_trans_encoder_config": {"name": "cam_trans_encoder", "in_chans": 3, "encoder_str": "global_rep_encoder"},
        "scale_encoder_config": {"name": "scale_encoder", "in_chans": 1, "encoder_str": "global_rep_encoder"},
        "overall_prob": 0, "dropout_prob": 1, "ray_dirs_prob": 0, "depth_prob": 0, "cam_prob": 0,
        "sparse_depth_prob": 0, "sparsification_removal_percent": 0, "depth_scale_norm_all_prob": 0,
        "pose_scale_norm_all_prob": 0},
}
IMAGE, TOKENS = 56, 4  # 4x4 patches per view pooled to 2x2


def _real_package_or_skip():
    """The installed package: stand-ins other tests imported (test_encoders_mapanything.py) are dropped first."""
    try:
        importlib.metadata.version("mapanything")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the real MapAnything package is not installed here (pip install "
                    "'git+https://github.com/facebookresearch/map-anything')")
    for name in [m for m in sys.modules if m.split(".")[0] in ("mapanything", "uniception")]:
        del sys.modules[name]  # re-imported from sys.path as it is now (stand-in paths are gone)
    try:
        cls = import_mapanything_class()
    except Geo3dError as e:
        pytest.skip(f"the real MapAnything package is not importable here: {e}")
    if dinov2_hub_dir() is None:
        hub = torch.hub.get_dir()
        pytest.skip(f"no DINOv2 hub code in {hub} (git clone https://github.com/facebookresearch/dinov2 "
                    f"{hub}/facebookresearch_dinov2_main)")
    return cls


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    """A weights dir (config.json + model.safetensors) of a random-init small real MapAnything."""
    cls = _real_package_or_skip()
    torch.manual_seed(0)
    with dinov2_hub_code_from_cache(dinov2_hub_dir()):
        model = cls(**copy.deepcopy(SMALL_CONFIG)).eval()
    with torch.no_grad():  # layer scales start at 1e-5: make every block matter
        for name, p in model.named_parameters():
            if name.endswith((".ls1.gamma", ".ls2.gamma")):
                p.fill_(0.5)
    d = tmp_path_factory.mktemp("small_mapanything")
    (d / "config.json").write_text(json.dumps(SMALL_CONFIG))
    save_model(model, str(d / "model.safetensors"))
    return d, model


def _demo_frames() -> torch.Tensor:
    mix = LiberoMixture("demo", image_size=IMAGE)
    frames = [frames_to_model_input(mix.read_stored_frames(i), IMAGE, mix.frame_orientation(0)) for i in (0, 130)]
    return torch.from_numpy(np.stack(frames))  # [2 frames, 2 views, S, S, 3]


def _normalized_by_uniception(images: torch.Tensor, norm_type: str) -> list[dict]:
    """MapAnything's view dicts, normalized with uniception's own table (not the adapter's)."""
    from uniception.models.encoders.image_normalizations import IMAGE_NORMALIZATION_DICT

    norm = IMAGE_NORMALIZATION_DICT[norm_type]
    x = images.permute(0, 1, 4, 2, 3).float() / 255.0
    x = (x - norm.mean.view(1, 1, 3, 1, 1)) / norm.std.view(1, 1, 3, 1, 1)
    return [{"img": x[:, v].contiguous(), "data_norm_type": [norm_type]} for v in range(x.shape[1])]


def test_the_normalization_table_is_uniceptions():
    _real_package_or_skip()
    from uniception.models.encoders.image_normalizations import IMAGE_NORMALIZATION_DICT

    assert set(NORM_TYPES) == set(IMAGE_NORMALIZATION_DICT)
    for name, (mean, std) in NORM_TYPES.items():
        torch.testing.assert_close(torch.tensor(mean), IMAGE_NORMALIZATION_DICT[name].mean, rtol=0, atol=1e-7)
        torch.testing.assert_close(torch.tensor(std), IMAGE_NORMALIZATION_DICT[name].std, rtol=0, atol=1e-7)


def test_adapter_tokens_equal_mapanythings_own_forward(small_weights, monkeypatch):
    weights, reference = small_weights
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled by the test")

    for obj, name in ((socket.socket, "connect"), (socket, "getaddrinfo"), (socket, "create_connection")):
        monkeypatch.setattr(obj, name, refuse)
    enc = MapAnythingEncoder(weights=weights, image_size=IMAGE, tokens_per_view=TOKENS, device="cpu", dtype="float32")
    monkeypatch.undo()
    assert attempts == []  # the real package, built offline: no lookup, no connect
    images = _demo_frames()
    ours = enc.encode(images)
    with torch.inference_mode():
        our_features = enc.view_features(enc.model_inputs(images))
    captured = {}
    hook = reference.info_sharing.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    try:
        with torch.inference_mode():
            reference(_normalized_by_uniception(images, reference.encoder.data_norm_type))
    finally:
        hook.remove()
    out = captured["out"]
    final = out[0] if isinstance(out, tuple) else out
    for a, b in zip(our_features, final.features):  # the per-view grids, bit for bit in fp32
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)
    theirs = pool_view_features(list(final.features), TOKENS)
    assert ours.shape == (2, 2, TOKENS, 384)
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours[0], ours[1])  # two different frames give different tokens
    assert enc.data_norm_type == reference.encoder.data_norm_type == "dinov2"


def test_every_tap_equals_mapanythings_own_forward_and_one_pass_equals_separate_ones(small_weights):
    """encoder = what MapAnything's forward feeds info_sharing (the fusion norm's output, also its DPT head's first
    input); info_sharing_<i> = the IFR's intermediates (indices [1, 2] here; [7, 11] in the release); all taps of
    one pass equal single-tap passes bit for bit (fp32, CPU)."""
    weights, reference = small_weights
    enc = MapAnythingEncoder(weights=weights, image_size=IMAGE, tokens_per_view=TOKENS, device="cpu", dtype="float32")
    taps = enc.available_taps()
    assert taps == ("info_sharing", "encoder", "info_sharing_1", "info_sharing_2")
    images = _demo_frames()
    both = enc.encode_taps(images, taps)
    captured = {}
    pre = reference.info_sharing.register_forward_pre_hook(lambda m, args: captured.setdefault("in", args[0]))
    post = reference.info_sharing.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    try:
        with torch.inference_mode():
            reference(_normalized_by_uniception(images, reference.encoder.data_norm_type))
    finally:
        pre.remove()
        post.remove()
    final, intermediates = captured["out"]
    theirs = {"info_sharing": final.features, "encoder": captured["in"].features,
              "info_sharing_1": intermediates[0].features, "info_sharing_2": intermediates[1].features}
    for tap in taps:
        assert torch.equal(both[tap], pool_view_features(list(theirs[tap]), TOKENS)), tap
        single = MapAnythingEncoder(weights=weights, image_size=IMAGE, tokens_per_view=TOKENS, device="cpu",
                                    dtype="float32", tap=tap)
        assert torch.equal(single.encode(images), both[tap]), tap
    assert not torch.equal(both["encoder"], both["info_sharing"])
