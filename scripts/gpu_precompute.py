"""Stage 1 figures on a GPU: encoder throughput per batch size, MFU, end-to-end precompute vs encoder-only, CUDA vs
CPU tokens. Writes one JSON (GPU name, driver, torch/CUDA, every figure with its settings) and prints a table.

Encoder: the real MapAnything when `--weights DIR` (or $GEO3D_MAPANYTHING_WEIGHTS) names a weights dir and the
package imports, else the FLOP-faithful stand-in (configs/standin_full.yaml: TinyGeometryModel 1536/20/24, ~1.13B
parameters, random weights drawn on the GPU, unhashed). The JSON says which, and that weights are random.
  throughput  batch 32/64/128 and the largest that fits (doubling until out of memory): frames/s (2-view 224^2
              frames, bf16 autocast, inference mode), peak GPU memory, MFU = frames/s x counted FLOPs per frame
              (torch.utils.flop_counter) / the bf16 matmul rate measured here (a big bf16 matmul); `--compile`
              adds the same with torch.compile.
  end to end  `geo3d precompute` of the demo data on the GPU (decode workers + writer threads as configured, and a
              old 2 decoders + 1 writer) vs the encoder alone on the same frames; write rate; decode frames per CPU-second
              and the decode workers the encoder needs.
  tokens      the same frames by the seeded tiny encoder on CUDA (bf16) vs CPU (fp32, bf16).
`--tiny` runs every code path at toy size on whatever device there is (CPU: < 60 s), for CI. `run(tiny)` is the
entry point a harness calls.

    python scripts/gpu_precompute.py [--tiny] [--compile] [--weights DIR] [--out gpu_precompute.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import bench_precompute as bp  # noqa: E402  (end_to_end / encoder_only / decoded_frames: one implementation)
import bench_token_precision as btp  # noqa: E402

from geo3d.core.device import describe_cpu, kernel_runtime
from geo3d.core.provenance import provenance
from geo3d.precompute.cli import precompute_config  # noqa: E402

STANDIN = ["encoder.tiny.width=1536", "encoder.tiny.depth=20", "encoder.tiny.heads=24", "encoder.tiny.out_dim=1536",
           "encoder.tiny.init=device_random"]  # = configs/standin_full.yaml
TOY = ["encoder.tiny.width=32", "encoder.tiny.depth=1", "encoder.tiny.heads=2", "encoder.tiny.out_dim=16",
       "encoder.tokens_per_view=4", "data.image_size=56", "store.shard_frames=8", "precompute.decode_workers=0"]


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_sdpa_flops(q, k, v, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """torch counts CUDA attention kernels but not the CPU one: the same formula (tiny mode on a CPU)."""
    return sdpa_flop_count(q, k, v)


def machine(device: str) -> dict[str, Any]:
    rec = {"device": device, "runtime": kernel_runtime(device), "cpu": describe_cpu(), "cpus": len(os.sched_getaffinity(0)),
           "provenance": provenance()}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        smi = shutil.which("nvidia-smi")
        driver = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                text=True).stdout.split("\n")[0].strip() if smi else None
        rec.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), driver=driver)
    return rec


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def _timed(fn: Callable[[], Any], device: str, iters: int) -> float:
    """Median seconds of one call after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_rate(device: str, n: int, iters: int) -> dict[str, float]:
    """The bf16 dense matmul rate this device reaches (the MFU denominator), FLOP/s."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    s = _timed(lambda: a @ b, device, iters)
    return {"n": n, "seconds": s, "flops_per_s": 2 * n**3 / s}


def frame_flops(encoder: Any, frames: np.ndarray) -> float:
    """FLOPs of encoding one frame (both views), counted on a batch of 2 through the real encode path."""
    x = torch.from_numpy(frames[:2]).to(encoder.device)
    with FlopCounterMode(display=False) as counter:
        encoder.encode(x)
    return counter.get_total_flops() / 2


def throughput(encoder: Any, frames: np.ndarray, batches: list[int], device: str, iters: int, flops: float,
               rate: float, label: str) -> list[dict[str, Any]]:
    """frames/s, peak memory and MFU per batch size; a batch that does not fit is reported as such."""
    rows = []
    for b in batches:
        x = torch.from_numpy(np.resize(frames, (b, *frames.shape[1:]))).to(device)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(torch.device(device))
        try:
            s = _timed(lambda: encoder.encode(x), device, iters)
        except torch.cuda.OutOfMemoryError:
            rows.append({"encoder": label, "batch": b, "fits": False})
            break
        fps = b / s
        peak = torch.cuda.max_memory_allocated(torch.device(device)) / 2**30 if device.startswith("cuda") else None
        rows.append({"encoder": label, "batch": b, "fits": True, "frames_per_s": fps, "peak_memory_gib": peak,
                     "mfu": fps * flops / rate})
        print(f"  {label} batch {b}: {fps:.1f} frames/s, MFU {100 * fps * flops / rate:.1f}%"
              + (f", peak {peak:.1f} GiB" if peak is not None else ""), flush=True)
    return rows


def largest_batches(start: int, limit: int) -> list[int]:
    return [start * 2**k for k in range(1, 16) if start * 2**k <= limit]


def end_to_end(overrides: list[str], data_root: Path, frames: np.ndarray, device: str, tmp: Path,
               variants: dict[str, list[str]], decode_rate: float) -> list[dict[str, Any]]:
    """Real precompute (decode + encode + write) vs the encoder alone on the same frames, per setting."""
    rows = []
    for name, extra in variants.items():
        t0 = time.perf_counter()
        steady, overall = bp.end_to_end([*overrides, *extra], data_root, tmp / f"store-{name}", device)
        wall = time.perf_counter() - t0
        nbytes = sum(f.stat().st_size for f in (tmp / f"store-{name}").rglob("*") if f.is_file())
        enc = bp.encoder_only([*overrides, *extra], data_root, frames, device)
        shutil.rmtree(tmp / f"store-{name}")  # full-size tokens: 1.2 MB a frame
        rows.append({"setting": name, "overrides": extra, "end_to_end_fps": steady, "incl_startup_fps": overall,
                     "encoder_only_fps": enc, "ratio": steady / enc if enc else None, "store_bytes": nbytes,
                     "write_mb_per_s": nbytes / 1e6 / wall, "decode_workers_needed": math.ceil(enc / decode_rate)})
        print(f"  e2e [{name}] {steady:.1f} frames/s vs encoder-only {enc:.1f} -> ratio {steady / enc:.2f}; "
              f"decode workers needed {math.ceil(enc / decode_rate)}", flush=True)
    return rows


def pick_encoder(tiny: bool, weights: str | None) -> tuple[list[str], str]:
    """Overrides for the encoder to measure, and what it is (named beside every figure)."""
    if tiny:
        return TOY, "tiny toy encoder (seeded, 32/1/2) at 56^2: code paths only, no figure to keep"
    if weights:
        from geo3d.encoders.mapanything import import_mapanything_class

        import_mapanything_class()
        return ["encoder.name=mapanything", f"encoder.mapanything.weights={weights}"], \
            f"real MapAnything class, weights {weights}"
    return STANDIN, "FLOP-faithful stand-in (TinyGeometryModel 1536/20/24, ~1.13B, random weights, unhashed)"


def run(tiny: bool, compile: bool = False, weights: str | None = None, out: Path | None = None) -> dict[str, Any]:
    """Measure (or, `tiny`, exercise) every stage-1 GPU figure; returns the JSON record (also written to `out`)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not tiny and device != "cuda":
        raise SystemExit("gpu_precompute: no CUDA device here; use --tiny to exercise the code paths on the CPU")
    overrides, what = pick_encoder(tiny, weights or os.environ.get("GEO3D_MAPANYTHING_WEIGHTS"))
    rec: dict[str, Any] = {"machine": machine(device), "encoder": what, "weights": "random" if "random" in what
                           else "as given", "tiny": tiny, "compile": compile}

    def save() -> None:  # after each stage: a run cut short by a time limit still leaves what it measured
        if out is not None:
            Path(out).write_text(json.dumps(rec, indent=2, default=str))

    rec["matmul_bf16"] = matmul_rate(device, 256 if tiny else 8192, 3 if tiny else 50)
    print(f"gpu_precompute on {rec['machine'].get('gpu', device)}: {what}; bf16 matmul "
          f"{rec['matmul_bf16']['flops_per_s'] / 1e12:.2f} TFLOP/s", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_precompute_") as tmp:
        tmp = Path(tmp)
        data_root = bp.make_synthetic_libero(tmp / "data", episodes_per_suite=2, length=40, size=64) if tiny \
            else REPO / "demo_data"
        cfg = precompute_config([f"data.data_root={data_root}", *overrides])
        c0 = time.process_time()
        frames = bp.decoded_frames(data_root, int(cfg.data.image_size))
        decode_rate = len(frames) / (time.process_time() - c0)
        rec["decode_frames_per_cpu_s"] = decode_rate
        from geo3d.encoders import build_encoder

        encoder = build_encoder(cfg.encoder, int(cfg.data.image_size), device)
        flops = frame_flops(encoder, frames)
        rec["flops_per_frame"] = flops
        batches = [2, 4, 8] if tiny else [32, 64, 128]
        rate, iters = rec["matmul_bf16"]["flops_per_s"], 2 if tiny else 5
        rows = throughput(encoder, frames, batches, device, iters, flops, rate, "eager")
        if not tiny:
            rows += throughput(encoder, frames, largest_batches(128, 2048), device, 2, flops, rate, "eager")
        if compile:
            encoder.view_features = torch.compile(encoder.view_features, backend="eager" if tiny else "inductor")
            rows += throughput(encoder, frames, batches, device, iters, flops, rate, "torch.compile")
        rec["throughput"] = rows
        save()
        del encoder
        variants = {"configured": [], "wide": ["precompute.decode_workers=2", "precompute.writer_threads=2"]} if tiny \
            else {"configured": ["precompute.batch_size=128"],  # auto CPU split (the H200 run's "wide": 8 + 4)
                  "2+1": ["precompute.batch_size=128", "precompute.decode_workers=2", "precompute.writer_threads=1"]}
        rec["end_to_end"] = end_to_end(overrides, data_root, frames, device, tmp, variants, decode_rate)
        save()
        rec["tokens"] = btp.measure(btp.demo_frames(4 if tiny else 8), ["demo"] if tiny else ["demo", "compute"],
                                    avx2=False)
    save()
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="toy sizes on any device (CI): code paths, not figures")
    ap.add_argument("--compile", action="store_true", help="also measure with torch.compile")
    ap.add_argument("--weights", help="MapAnything weights dir (else $GEO3D_MAPANYTHING_WEIGHTS, else the stand-in)")
    ap.add_argument("--out", type=Path, default=Path("gpu_precompute.json"))
    args = ap.parse_args()
    run(args.tiny, args.compile, args.weights, args.out)
    print(f"gpu_precompute: wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
