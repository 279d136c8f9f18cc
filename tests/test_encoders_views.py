"""The image path and token pooling shared by the tiny and the MapAnything encoders."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch

import geo3d.data.transforms as T
import geo3d.encoders.views as views
from geo3d.core.errors import Geo3dError
from geo3d.encoders.views import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_image_size,
    frames_to_model_input,
    grid_side,
    normalize_views,
    pool_view_features,
    preprocessing_record,
)


@pytest.mark.parametrize("size", [200, 256, 0, 13])
def test_image_size_must_be_multiple_of_14(size):
    with pytest.raises(Geo3dError, match="not a multiple of the patch size 14"):
        check_image_size(size)


def test_valid_sizes_pass():
    for size in (14, 196, 224, 518):
        check_image_size(size)


def test_tokens_per_view_must_be_square():
    assert grid_side(196) == 14
    with pytest.raises(Geo3dError, match="not a square"):
        grid_side(200)


def test_frames_follow_their_declared_orientation_then_resize():
    stored = np.zeros((2, 28, 28, 3), np.uint8)
    stored[0, -1, -1] = 255  # raw render: bottom-right = top-left upright
    stored[1, 0, 0] = 200  # wrist: top-left = bottom-right upright
    out = frames_to_model_input(stored, 28, "raw_render")
    assert out.shape == (2, 28, 28, 3) and out.dtype == np.uint8
    assert out[0, 0, 0, 0] == 255 and out[1, -1, -1, 0] == 200
    np.testing.assert_array_equal(frames_to_model_input(stored, 28, "upright"), stored)  # LeRobot: unturned
    assert frames_to_model_input(stored, 56, "upright").shape == (2, 56, 56, 3)


def test_imagenet_normalization_per_view():
    img = torch.zeros((1, 2, 14, 14, 3), dtype=torch.uint8)
    img[:, 1] = 255
    views = normalize_views(img, "cpu", "dinov2")
    assert len(views) == 2 and views[0].shape == (1, 3, 14, 14)
    for c in range(3):
        assert torch.allclose(views[0][0, c], torch.tensor(-IMAGENET_MEAN[c] / IMAGENET_STD[c]))
        assert torch.allclose(views[1][0, c], torch.tensor((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]))


def test_normalization_follows_the_data_norm_type_and_refuses_unknown_ones():
    img = torch.zeros((1, 2, 14, 14, 3), dtype=torch.uint8)
    img[:, 1] = 255
    dust3r = normalize_views(img, "cpu", "dust3r")  # mean 0.5, std 0.5: [-1, 1]
    assert torch.all(dust3r[0] == -1) and torch.all(dust3r[1] == 1)
    assert preprocessing_record(224, 196, "bfloat16", "dust3r")["normalize"] == {
        "mean": [0.5] * 3, "std": [0.5] * 3, "data_norm_type": "dust3r"}
    with pytest.raises(Geo3dError, match="unknown image normalization data_norm_type='clip'.*known: .*dinov2"):
        normalize_views(img, "cpu", "clip")


def test_pool_16x16_grid_to_196_tokens_row_major():
    b, d = 3, 8
    grid = torch.arange(16, dtype=torch.float32).view(1, 1, 1, 16).expand(b, d, 16, 16)  # value = column
    rows = torch.arange(16, dtype=torch.float32).view(1, 1, 16, 1).expand(b, d, 16, 16)
    out = pool_view_features([grid, rows], 196)
    assert out.shape == (b, 2, 196, d) and out.dtype == torch.bfloat16
    cols = out[0, 0, :, 0].float().view(14, 14)
    assert torch.all(cols[:, 1:] > cols[:, :-1])  # columns increase left -> right within a row
    r = out[0, 1, :, 0].float().view(14, 14)
    assert torch.all(r[1:] > r[:-1])  # rows increase top -> bottom
    assert cols[0, 0] == 0.5 and cols[0, -1] == 14.5  # adaptive pool windows of 2 at the borders


def test_preprocessing_record_names_every_step():
    rec = preprocessing_record(224, 196, "bfloat16", "dinov2")
    assert rec["patch_grid"] == [16, 16] and rec["token_pool"]["grid"] == [14, 14]
    assert rec["views"] == ["agentview", "wrist"] and "upright frames unturned" in rec["orientation"]
    assert rec["normalize"]["mean"] == list(IMAGENET_MEAN)


def test_a_changed_image_path_changes_the_record(monkeypatch):
    """If the orientation step changes (or resize does), stores made before are refused instead of mixed."""
    before = preprocessing_record(56, 4, "bfloat16", "dinov2")
    assert before["image_path_probe"]["orientation"] == "identity"  # upright LeRobot frames pass unturned
    assert before["image_path_probe"]["raw_render"] == "rot180"  # simulator renders are turned once
    monkeypatch.setattr(T, "to_upright", lambda img, orientation: T.turn_180(img))  # the old, wrong path
    after = preprocessing_record(56, 4, "bfloat16", "dinov2")
    assert after["image_path_probe"]["orientation"] == "rot180" and after != before


def test_normalization_tensors_are_built_once_per_device_and_dtype():
    """No per-batch torch.tensor(mean/std, device=...): on CUDA that is a host->device copy + sync per batch."""
    img = torch.randint(0, 256, (2, 2, 14, 14, 3), dtype=torch.uint8)
    first = normalize_views(img, "cpu", "dinov2")
    with mock.patch.object(views.torch, "tensor", side_effect=AssertionError("built again")):
        again = normalize_views(img, "cpu", "dinov2")
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    cpu = torch.device("cpu")
    a, b = views.norm_tensors("dinov2", cpu, torch.float32), views.norm_tensors("dinov2", cpu, torch.float32)
    assert a[0] is b[0] and a[1] is b[1]
    assert views.norm_tensors("dinov2", cpu, torch.float64)[0].dtype == torch.float64  # one entry per dtype
    with torch.inference_mode():
        fresh = views.norm_tensors("dust3r", cpu, torch.float32)
    assert not fresh[0].is_inference()  # usable outside inference mode too
    expect = (img.permute(0, 1, 4, 2, 3).float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)) \
        / torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
    assert torch.equal(first[0], expect[:, 0]) and torch.equal(first[1], expect[:, 1])  # same bits as before
