"""Token precision across compute dtypes and kernels: the same frames encoded by the same (seeded) tiny encoder
in fp32 vs bf16 on this CPU, bf16 native vs bf16 with oneDNN capped at AVX2 (other kernels, same dtype: the
kind of difference another device type makes), and, where CUDA is present, CUDA bf16 vs CPU fp32 / bf16.
Per pair: max and mean |diff| of the stored bf16 tokens, the fraction of stored bf16 values that differ, and
the tokens' RMS for scale. Frames: the shipped demo_data/ (real LIBERO renders), upright + 224^2.

    python scripts/bench_token_precision.py [--frames 16] [--sizes demo,compute] [--json OUT]
    sizes: demo (width 128, depth 2, D 128), compute (384/4/384), full (1536/20/1536, ~1.13B; slow on a CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geo3d.core.device import describe_cpu, kernel_runtime
from geo3d.data.mixture import LiberoMixture
from geo3d.encoders.tiny import TinyEncoder
from geo3d.precompute.decode import DataSource, decode_episode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = {"demo": (128, 2, 4, 128), "compute": (384, 4, 6, 384), "full": (1536, 20, 24, 1536)}  # width depth heads D


def demo_frames(n: int, image_size: int = 224) -> np.ndarray:
    """n frames spread over the demo's first episodes (both suites), model-ready uint8 [n,2,S,S,3]."""
    root = REPO / "demo_data"
    mix = LiberoMixture("demo", root, image_size=image_size)
    src, spans = DataSource("demo", str(root), image_size), mix.episodes()
    picks = [spans[0], spans[-1]]
    eps = [decode_episode(src, s.dataset_id, s.episode_index).frames for s in picks]
    per = [n // 2, n - n // 2]
    return np.concatenate([e[np.linspace(0, len(e) - 1, k).astype(int)] for e, k in zip(eps, per)])


def encode(size: str, dtype: str, device: str, frames: np.ndarray, batch: int = 4) -> torch.Tensor:
    width, depth, heads, dim = SIZES[size]
    enc = TinyEncoder(width=width, depth=depth, heads=heads, out_dim=dim, seed=0, image_size=frames.shape[2],
                      tokens_per_view=196, device=device, dtype=dtype)
    x = torch.from_numpy(frames)
    return torch.cat([enc.encode(x[a:a + batch]).cpu() for a in range(0, len(x), batch)])


def compare(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Stored-token differences (both bf16, as a store holds them)."""
    d = (a.float() - b.float()).abs()
    return {"max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()),
            "frac_bf16_values_differ": float((a.view(torch.int16) != b.view(torch.int16)).float().mean()),
            "token_rms": float(b.float().pow(2).mean().sqrt())}


def _child(size: str, frames_file: str, out_file: str) -> None:
    """Encode in bf16 in this process (started with ONEDNN_MAX_CPU_ISA set: oneDNN reads it once)."""
    torch.save(encode(size, "bfloat16", "cpu", np.load(frames_file)), out_file)


def avx2_bf16(size: str, frames: np.ndarray, tmp: Path) -> torch.Tensor:
    np.save(tmp / "frames.npy", frames)
    subprocess.run([sys.executable, __file__, "--child", size, str(tmp / "frames.npy"), str(tmp / "avx2.pt")],
                   env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}, check=True)
    return torch.load(tmp / "avx2.pt")


def measure(frames: np.ndarray, sizes: list[str], avx2: bool = True) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="token_precision_") as tmp:
        for size in sizes:
            cpu = {dt: encode(size, dt, "cpu", frames) for dt in ("float32", "bfloat16")}
            pairs = {"cpu bf16 vs cpu fp32": (cpu["bfloat16"], cpu["float32"])}
            if avx2:
                pairs["cpu bf16 AVX2-capped vs cpu bf16 native"] = (avx2_bf16(size, frames, Path(tmp)), cpu["bfloat16"])
            if torch.cuda.is_available():
                cuda = {dt: encode(size, dt, "cuda", frames) for dt in ("float32", "bfloat16")}
                pairs.update({"cuda bf16 vs cpu fp32": (cuda["bfloat16"], cpu["float32"]),
                              "cuda bf16 vs cpu bf16": (cuda["bfloat16"], cpu["bfloat16"]),
                              "cuda fp32 vs cpu fp32": (cuda["float32"], cpu["float32"])})
            for name, (a, b) in pairs.items():
                rows.append({"size": size, "pair": name, "frames": len(frames), **compare(a, b)})
                r = rows[-1]
                print(f"[{size}] {name}: max |diff| {r['max_abs_diff']:.4g}, mean |diff| {r['mean_abs_diff']:.3g}, "
                      f"{100 * r['frac_bf16_values_differ']:.2f}% of bf16 values differ (token RMS "
                      f"{r['token_rms']:.3g})", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--sizes", default="demo,compute")
    ap.add_argument("--no-avx2", action="store_true", help="skip the oneDNN-capped-at-AVX2 comparison")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(*args.child)
        return

    frames = demo_frames(args.frames)
    print(f"bench_token_precision: {len(frames)} demo frames, {describe_cpu()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}",
          flush=True)
    rows = measure(frames, args.sizes.split(","), avx2=not args.no_avx2)
    if args.json:
        args.json.write_text(json.dumps({"runtime": kernel_runtime("cpu"), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
