"""Precompute benchmark: end-to-end `geo3d precompute` frames/s vs encoder-only frames/s on the same frames,
measured side by side in one run (alternating rounds), on this machine and one device: CUDA when present (both
sides), else the CPU (`--device` to choose). Goal: ratio >= 0.9.

end-to-end  = steady state (after the first shard; startup is also printed) of the real worker
              (`geo3d.precompute.run.run_precompute`): background decode of the AV1 videos, upright + resize,
              batches filled across shards, encode, background checksum/write/commit into a fresh store.
encoder-only = the same encoder on the same device, same batch size (across shards, as the worker does), same
              torch thread count, over the same frames already decoded into memory (decode time excluded).
null-encoder = the real worker with an encoder that returns zero tokens instantly (skip: `--no-null`): the decode + write
              ceiling of this machine, in frames/s and per core.
decode rate  = decode + upright + resize frames per CPU-second (one core, load-independent). Decode workers an
              encoder needs = its encoder-only frames/s / this rate (printed per configuration).
On a 2-core CPU, decode and the CPU encoder share the same cores, so a decode-heavy configuration cannot reach 1.0
here; on a GPU node the encoder runs on the GPU and decode on spare cores. Configurations:
  demo      : the demo's tiny encoder (configs/precompute.yaml), decode-bound on this CPU
  compute   : a wider tiny encoder, so the encoder dominates as MapAnything does on a GPU

    python scripts/bench_precompute.py [--episodes 2] [--length 100] [--rounds 2] [--only demo|compute]
                                       [--demo-data] [--no-null] [--device auto|cpu|cuda]
                                       [key=value overrides for both sides]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import os
from unittest import mock

import geo3d.encoders as encoders
from geo3d.core.device import describe_cpu, resolve_device
from geo3d.data.mixture import LiberoMixture
from geo3d.encoders import build_encoder
from geo3d.precompute.cli import precompute_config  # noqa: E402
from geo3d.precompute.decode import DataSource, decode_episode
from geo3d.precompute.pipeline import encode_frames
from geo3d.precompute.run import _cpu_threads, cpu_split, full_batches, run_precompute

from data_fixtures import make_synthetic_libero  # noqa: E402

CONFIGS = {
    "demo": [],
    "compute": ["encoder.tiny.width=384", "encoder.tiny.depth=4", "encoder.tiny.heads=6", "encoder.tiny.out_dim=384"],
}


def end_to_end(cfg_overrides: list[str], data_root: Path, store: Path, device: str) -> tuple[float, float]:
    """(steady-state frames/s after the first shard, overall frames/s including startup)."""
    cfg = precompute_config([
        "data.suite=demo", f"data.data_root={data_root}", f"precompute.store={store}", f"precompute.device={device}",
        *cfg_overrides])
    r = run_precompute(cfg)
    return r.steady_fps or 0.0, r.frames / r.seconds


def encoder_only(cfg_overrides: list[str], data_root: Path, frames: np.ndarray, device: str) -> float:
    """The worker's encoder, batches and device, without decode or writes: frames/s."""
    cfg = precompute_config([f"data.data_root={data_root}", f"precompute.device={device}", *cfg_overrides])
    if device == "cpu":
        torch.set_num_threads(_cpu_threads(cfg.precompute, cpu_split(cfg.precompute, device)[0]))  # the worker's
    enc = build_encoder(cfg.encoder, int(cfg.data.image_size), device)
    batch, full = int(cfg.precompute.batch_size), full_batches(cfg.precompute.full_batches, device)
    out = torch.empty((len(frames), 2, enc.tokens_per_view, enc.dim), dtype=torch.bfloat16,
                      pin_memory=device.startswith("cuda"))
    encode_frames(enc, frames[:batch], out[:batch], batch, full)  # warm-up
    t0 = time.perf_counter()
    encode_frames(enc, frames, out, batch, full)
    return len(frames) / (time.perf_counter() - t0)


class NullEncoder:
    """Stands in for the encoder: zero tokens of the configured shape, no compute (decode + write ceiling)."""

    def __init__(self, real):
        self.__dict__.update({k: getattr(real, k) for k in ("image_size", "tokens_per_view", "dim", "device",
                                                           "dtype", "name", "tap")})
        self._real = real
        self.available_taps, self.tap_dim = real.available_taps, real.tap_dim

    def identity(self, tap=None):
        return {**self._real.identity(tap), "name": "null-bench"}

    def runtime(self):
        return self._real.runtime()

    def store_identity(self):
        return {**self.identity(), "runtime": self.runtime()}

    def preprocessing(self):
        return self._real.preprocessing()

    def versions(self):
        return self._real.versions()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_taps(images, (self.tap,))[self.tap]

    def encode_taps(self, images: torch.Tensor, taps) -> dict:
        return {t: torch.zeros((images.shape[0], images.shape[1], self.tokens_per_view, self.tap_dim(t)),
                               dtype=torch.bfloat16) for t in taps}


def null_ceiling(data_root: Path, tmp: Path, rounds: int, overrides: list[str], decode_per_cpu_s: float,
                 device: str) -> None:
    """End-to-end precompute with NullEncoder: the decode + write ceiling, frames/s and per core."""
    real_build = encoders.build_encoder
    runs = []
    with mock.patch.object(encoders, "build_encoder", lambda *a, **k: NullEncoder(real_build(*a, **k))):
        for r in range(rounds):
            runs.append(end_to_end(overrides, data_root, tmp / f"store-null-{r}", device)[0])
    fps, cores = statistics.median(runs), len(os.sched_getaffinity(0))
    print(f"[null] decode + write ceiling {fps:.1f} frames/s wall on {cores} shared cores (rounds "
          f"{[round(x, 1) for x in runs]}); decode + upright + resize alone {decode_per_cpu_s:.1f} frames per "
          f"CPU-second (one core, load-independent)", flush=True)


def decoded_frames(data_root: Path, image_size: int) -> np.ndarray:
    mix = LiberoMixture("demo", data_root, image_size=image_size)
    src = DataSource("demo", str(data_root), image_size, decoder_threads=1)  # as one decode worker runs
    return np.concatenate([decode_episode(src, s.dataset_id, s.episode_index).frames for s in mix.episodes()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=2, help="episodes per suite (2 suites)")
    ap.add_argument("--length", type=int, default=100, help="frames per episode")
    ap.add_argument("--size", type=int, default=256, help="stored frame side (LIBERO: 256)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--demo-data", action="store_true", help="use the shipped demo_data/ (real LIBERO renders)")
    ap.add_argument("--only", choices=sorted(CONFIGS))
    ap.add_argument("--no-null", action="store_true", help="skip the decode + write ceiling (null encoder) run")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda[:N]: both sides")
    ap.add_argument("overrides", nargs="*", help="extra config overrides for both sides, e.g. precompute.decode_workers=1")
    args = ap.parse_args()

    device = resolve_device(args.device)
    where = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else describe_cpu()
    with tempfile.TemporaryDirectory(prefix="bench_precompute_") as tmp:
        data_root = REPO / "demo_data" if args.demo_data else make_synthetic_libero(
            Path(tmp) / "data", suites=("libero_spatial", "libero_object"), episodes_per_suite=args.episodes,
            length=args.length, size=args.size)
        c0 = time.process_time()
        frames = decoded_frames(data_root, 224)
        decode_per_cpu_s = len(frames) / (time.process_time() - c0)
        what = "demo_data/" if args.demo_data else f"synthetic {args.size}px"
        print(f"bench_precompute: {len(frames)} frames ({what} AV1, 2 views), device {device} ({where}), torch "
              f"{torch.__version__}, {torch.get_num_threads()} threads available", flush=True)
        if not args.no_null:
            null_ceiling(data_root, Path(tmp), args.rounds, list(args.overrides), decode_per_cpu_s, device)
        for name, overrides in CONFIGS.items():
            if args.only and name != args.only:
                continue
            overrides = [*overrides, *args.overrides]
            e2e, e2e_all, enc = [], [], []
            for r in range(args.rounds):  # alternate, so machine load affects both sides alike
                steady, overall = end_to_end(overrides, data_root, Path(tmp) / f"store-{name}-{r}", device)
                e2e.append(steady)
                e2e_all.append(overall)
                enc.append(encoder_only(overrides, data_root, frames, device))
            ratio = statistics.median(e2e) / statistics.median(enc)
            print(f"[{name}] on {device}: end-to-end {statistics.median(e2e):.1f} frames/s | encoder-only "
                  f"{statistics.median(enc):.1f} frames/s | ratio {ratio:.2f} (goal >= 0.9) | "
                  f"rounds e2e={[round(x, 1) for x in e2e]} enc={[round(x, 1) for x in enc]} | incl. startup "
                  f"{statistics.median(e2e_all):.1f} frames/s | torch threads {torch.get_num_threads()} | decode "
                  f"workers to keep up with this encoder: {statistics.median(enc) / decode_per_cpu_s:.2f} "
                  f"(encoder-only / {decode_per_cpu_s:.0f} decode frames per CPU-second)", flush=True)


if __name__ == "__main__":
    main()
