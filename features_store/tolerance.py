"""How `verify-cache --recompute` compares a fresh encode with the stored tokens, and why.

Bit-exact only where it is meaningful: store shard and recompute on CPU with the same kernel runtime (torch,
CPU capability, bf16 units; geo3d.core.device) -- CPU tokens do not depend on the batch they were encoded in
(tests/test_encoders_tiny.py), so a fresh encode must reproduce every bit. Everywhere else (another device type,
other versions or CPU ISA, or CUDA, whose GEMM kernels are chosen per batch shape while the recompute's batches
differ from the store's) the same computation rounds differently and the comparison uses an absolute tolerance.

DEFAULT_RECOMPUTE_ATOL, on stored tokens of RMS ~1 (LayerNorm output, pooled): measured on CPU with the tiny
encoder (scripts/bench_token_precision.py, precompute/README.md "Token precision"), the same frames differ by at
most 0.016 between two bf16 kernel sets (oneDNN native vs capped at AVX2) and 0.031 between fp32 and bf16
compute; another encoder (another seed) differs by O(1). CUDA (one H200, docs/gpu.md) vs CPU: at most 0.031
(bf16 vs fp32) and 0.016 (bf16 vs bf16), demo and compute sizes (the full-size stand-in was not compared on
CUDA). 0.25 passes kernel rounding with 8x
margin and still fails a wrong encoder; `--recompute-atol` overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from geo3d.core.provenance import kernel_key

DEFAULT_RECOMPUTE_ATOL = 0.25


@dataclass(frozen=True)
class Comparison:
    exact: bool  # every frame must be bit-identical
    atol: float  # else: max |diff| per frame allowed
    why: str

    def describe(self) -> str:
        return f"bit-exact ({self.why})" if self.exact else f"max |diff| <= atol {self.atol:g} ({self.why})"


def _device_type(device: str) -> str:
    return str(device).split(":")[0] or "unknown"


def _writer_type(writer: Mapping[str, Any]) -> str:
    runtime = writer.get("runtime") or {}
    return str(runtime.get("device_type") or _device_type(writer.get("device", "unknown")))


def comparison_rule(recompute_device: str, recompute_runtime: Mapping[str, Any] | None,
                    writers: Sequence[Mapping[str, Any]], atol: float | None = None) -> Comparison:
    """The comparison for tokens written by `writers` (the commit markers' writer records of the sampled
    shards) against a recompute on `recompute_device` with `recompute_runtime`; `atol` None = the default."""
    tol = DEFAULT_RECOMPUTE_ATOL if atol is None else float(atol)
    src = f"{'explicit --recompute-atol' if atol is not None else 'default'} atol"
    mine = (recompute_runtime or {}).get("device_type") or _device_type(recompute_device)
    types = sorted({_writer_type(w) for w in writers})
    if types != [mine]:
        return Comparison(False, tol, f"store written on {', '.join(types)}, recompute on {mine}: other kernels "
                          f"round bf16 differently; {src}")
    keys = {kernel_key(w.get("runtime")) for w in writers}
    if mine == "cpu" and (recompute_runtime is None or None in keys):  # a store from before runtime records
        return Comparison(True, tol, "store and recompute both on CPU (no kernel runtime recorded): CPU tokens "
                          "are deterministic and batch-independent")
    if mine == "cpu" and keys == {kernel_key(recompute_runtime)}:
        return Comparison(True, tol, "same device type (cpu) and kernel runtime (torch, CPU capability, bf16 "
                          "units): CPU tokens are deterministic and batch-independent")
    if mine == "cpu":
        return Comparison(False, tol, f"both on CPU but with another kernel runtime ({_differing(writers, recompute_runtime)}): "
                          f"other kernels round differently; {src}")
    return Comparison(False, tol, f"both on {mine}, but its kernels are picked per batch shape and the recompute's "
                      f"batches differ from the store's; {src}")


def _differing(writers: Sequence[Mapping[str, Any]], runtime: Mapping[str, Any] | None) -> str:
    mine = dict(runtime or {})
    keys = sorted({k for w in writers for k, v in (w.get("runtime") or {}).items()
                   if k != "recorded_by" and str(mine.get(k)) != str(v)})
    return ", ".join(keys) or "unknown"
