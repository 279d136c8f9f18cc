"""verify-cache --recompute: which comparison (bit-exact or atol) applies, from the recorded kernel runtimes."""

from __future__ import annotations

import pytest
import torch

from geo3d.core.device import kernel_runtime
from geo3d.core.provenance import RUNTIME_KEY, kernel_key, without_runtime
from geo3d.features_store import FeatureStore
from geo3d.features_store.testing import TINY_ENCODER, make_synthetic_store, synthetic_spec
from geo3d.features_store.tolerance import DEFAULT_RECOMPUTE_ATOL, comparison_rule

from helpers import run_geo3d

CPU = kernel_runtime("cpu")


def test_cpu_runtime_records_what_selects_kernels():
    assert CPU["device_type"] == "cpu" and CPU["torch"] == torch.__version__
    assert isinstance(CPU["cpu_native_bf16"], bool) and CPU["cpu_capability"]
    assert kernel_key(CPU) == kernel_key({**CPU, "recorded_by": "other"})  # informational keys do not count
    assert kernel_key(CPU) != kernel_key({**CPU, "onednn_max_cpu_isa": "AVX2"})
    assert kernel_key(None) is None
    assert without_runtime({"name": "tiny", RUNTIME_KEY: CPU}) == {"name": "tiny"}


def test_same_cpu_runtime_is_bit_exact():
    rule = comparison_rule("cpu", CPU, [{"device": "cpu", "runtime": CPU}])
    assert rule.exact and "same device type (cpu)" in rule.describe()


def test_old_store_on_cpu_stays_bit_exact():
    assert comparison_rule("cpu", CPU, [{"device": "cpu"}]).exact  # marker from before runtime records
    assert comparison_rule("cpu", None, [{"device": "cpu"}]).exact  # a recompute fn without a runtime


@pytest.mark.parametrize("writer, reason", [
    ({"device": "cuda:0"}, "store written on cuda, recompute on cpu"),
    ({"device": "cpu", "runtime": {**CPU, "torch": "0.0"}}, "another kernel runtime (torch)"),
    ({"device": "cpu", "runtime": {**CPU, "onednn_max_cpu_isa": "AVX2"}}, "onednn_max_cpu_isa"),
])
def test_other_kernels_use_the_default_atol(writer, reason):
    rule = comparison_rule("cpu", CPU, [writer])
    assert not rule.exact and rule.atol == DEFAULT_RECOMPUTE_ATOL and reason in rule.why and "default atol" in rule.why
    assert comparison_rule("cpu", CPU, [writer], atol=0.5).atol == 0.5


def test_cuda_on_both_sides_is_compared_with_atol_and_says_why():
    gpu = {"device_type": "cuda", "torch": "x", "cuda": "12.8", "gpu": "H200"}
    rule = comparison_rule("cuda:0", gpu, [{"device": "cuda:1", "runtime": gpu}])
    assert not rule.exact and "per batch shape" in rule.why
    mixed = comparison_rule("cuda:0", gpu, [{"device": "cuda:1", "runtime": gpu}, {"device": "cpu"}])
    assert "store written on cpu, cuda" in mixed.why


def test_cli_refuses_a_negative_or_nan_atol(tmp_path):
    make_synthetic_store(tmp_path / "s.zarr")
    for bad in ("-1", "nan"):
        proc = run_geo3d(["verify-cache", str(tmp_path / "s.zarr"), "--no-dataset", "--recompute", "2",
                          "--recompute-atol", bad], expect=2)
        assert proc.returncode == 2 and "--recompute-atol must be a number >= 0" in proc.stderr, proc.stderr


def test_a_store_attaches_from_another_device_type(tmp_path):
    """The recorded runtime is informational: resuming on another device (or torch) is allowed."""
    made_on_gpu = {**TINY_ENCODER, RUNTIME_KEY: {"device_type": "cuda", "gpu": "H200"}}
    FeatureStore.open_or_create(tmp_path / "s.zarr", synthetic_spec(encoder=made_on_gpu))
    store = FeatureStore.open_or_create(tmp_path / "s.zarr", synthetic_spec(encoder={**TINY_ENCODER,
                                                                                      RUNTIME_KEY: CPU}))
    assert store.spec.encoder[RUNTIME_KEY]["device_type"] == "cuda"  # the creator's record is kept
    FeatureStore.open_or_create(tmp_path / "s.zarr", synthetic_spec())  # a writer from before runtimes
    with pytest.raises(Exception, match="different configuration"):
        FeatureStore.open_or_create(tmp_path / "s.zarr", synthetic_spec(encoder={**TINY_ENCODER, "fingerprint": "x"}))
