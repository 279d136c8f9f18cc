"""The compute-dtype rule: bf16 only where the device computes it natively; recorded in the encoder identity."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from geo3d.core.device import cpu_flags, cpu_has_native_bf16, resolve_compute_dtype
from geo3d.core.errors import Geo3dError, StoreError
from geo3d.encoders.recompute import encoder_from_record
from geo3d.encoders.tiny import TinyEncoder
from geo3d.features_store import FeatureStore, StoreLayout, StoreSpec

SMALL = dict(width=32, depth=2, heads=2, out_dim=24, seed=0, image_size=56, tokens_per_view=4)


def test_explicit_dtypes_are_kept_and_unknown_ones_refused():
    assert resolve_compute_dtype("float32", "cpu") == "float32"
    assert resolve_compute_dtype("bfloat16", "cpu") == "bfloat16"
    assert resolve_compute_dtype("auto", "cuda:0") == "bfloat16"
    with pytest.raises(Geo3dError, match="auto, bfloat16, float32"):
        resolve_compute_dtype("fp16", "cpu")


def test_native_bf16_needs_the_cpu_flag():
    assert not cpu_has_native_bf16(frozenset({"avx2", "fma", "avx512f"}))  # AVX2/AVX512F only: emulated
    want = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert cpu_has_native_bf16(frozenset({"avx2", "avx512_bf16"})) == want
    assert resolve_compute_dtype("auto", "cpu") == ("bfloat16" if cpu_has_native_bf16(cpu_flags()) else "float32")


@pytest.mark.slow  # a real process: oneDNN reads its ISA cap at start-up
def test_auto_is_float32_when_onednn_may_not_use_bf16_units():
    """A real process with oneDNN capped at AVX2 (bf16 emulated there, ~36x slower matmuls) resolves to fp32."""
    code = "from geo3d.core.device import resolve_compute_dtype as r; print(r('auto', 'cpu'))"
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "float32"


def test_encoder_records_the_resolved_dtype_and_fp32_tokens_stay_bf16():
    auto, fp32 = TinyEncoder(**SMALL), TinyEncoder(**SMALL, dtype="float32")
    assert auto.identity()["compute_dtype"] == resolve_compute_dtype("auto", "cpu") == auto.dtype
    assert fp32.identity()["compute_dtype"] == "float32" and fp32.preprocessing()["autocast_dtype"] == "float32"
    x = torch.randint(0, 256, (2, 2, 56, 56, 3), dtype=torch.uint8)
    assert fp32.encode(x).dtype == torch.bfloat16
    bf16 = TinyEncoder(**SMALL, dtype="bfloat16")
    assert not torch.equal(bf16.encode(x), fp32.encode(x))  # the dtype changes the stored bits


def test_a_store_of_another_compute_dtype_refuses_to_attach(tmp_path):
    def spec(enc: TinyEncoder) -> StoreSpec:
        return StoreSpec(frames=4, views=2, tokens=4, dim=24, encoder=enc.identity(),
                         preprocessing=enc.preprocessing(), layout=StoreLayout(shard_frames=2))

    FeatureStore.open_or_create(tmp_path / "s.zarr", spec(TinyEncoder(**SMALL, dtype="bfloat16")))
    with pytest.raises(StoreError, match='encoder.compute_dtype: store has "bfloat16", requested "float32"'):
        FeatureStore.open_or_create(tmp_path / "s.zarr", spec(TinyEncoder(**SMALL, dtype="float32")))


def test_recompute_rebuilds_with_the_recorded_dtype_and_refuses_unrecorded_ones():
    fp32 = TinyEncoder(**SMALL, dtype="float32")
    again = encoder_from_record(fp32.identity(), fp32.preprocessing(), 4, device="cpu")
    assert again.dtype == "float32"
    old = {k: v for k, v in fp32.identity().items() if k != "compute_dtype"}
    with pytest.raises(StoreError, match="records no compute_dtype"):
        encoder_from_record(old, fp32.preprocessing(), 4, device="cpu")
