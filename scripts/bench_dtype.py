"""Compute-dtype benchmark: the demo's tiny encoder in bf16 autocast vs fp32, side by side in one run, and what
`auto` (geo3d.core.device) picks. Run twice: on this CPU as it is, and with oneDNN capped at AVX2
(ONEDNN_MAX_CPU_ISA=AVX2), which emulates bf16 as an AVX2-only CPU does. The faster dtype is the one `auto`
should pick in each case.

    python scripts/bench_dtype.py [--rounds 3] [--batch 8]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from geo3d.core.device import describe_cpu, resolve_compute_dtype
from geo3d.encoders import build_encoder
from geo3d.precompute.cli import precompute_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def measure(rounds: int, batch: int) -> str:
    torch.set_num_threads(1)
    encs = {dt: build_encoder(precompute_config([f"encoder.tiny.dtype={dt}"])
                              .encoder, 224, "cpu") for dt in ("bfloat16", "float32")}
    x = torch.randint(0, 255, (batch, 2, 224, 224, 3), dtype=torch.uint8)
    best = {k: 0.0 for k in encs}
    for _ in range(rounds):  # interleaved, best of rounds (the machine may be shared)
        for k, enc in encs.items():
            t0 = time.perf_counter()
            enc.encode(x)
            best[k] = max(best[k], batch / (time.perf_counter() - t0))
    auto = resolve_compute_dtype("auto", "cpu")
    faster = max(best, key=best.get)
    return (f"{describe_cpu()} | tiny encoder, 1 thread: bf16 {best['bfloat16']:.1f} frames/s, fp32 "
            f"{best['float32']:.1f} frames/s, fp32/bf16 {best['float32'] / best['bfloat16']:.2f}x | auto -> {auto} "
            f"({'the faster one' if auto == faster else 'NOT the faster one'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(measure(args.rounds, args.batch), flush=True)
        return
    cmd = [sys.executable, __file__, "--child", "--rounds", str(args.rounds), "--batch", str(args.batch)]
    for label, extra in (("as is", {}), ("oneDNN capped at AVX2 (bf16 emulated)", {"ONEDNN_MAX_CPU_ISA": "AVX2"})):
        out = subprocess.run(cmd, env={**os.environ, **extra}, capture_output=True, text=True, check=True)
        print(f"[{label}] {out.stdout.strip()}", flush=True)


if __name__ == "__main__":
    main()
