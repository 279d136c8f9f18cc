"""Frame-read throughput of the LIBERO data layer: sequential (stage 1) vs random access (stage 2).

Both cameras are decoded for every frame. Measured side by side in one run on the demo dataset
(or on a synthetic LIBERO-shaped dataset when demo_data/ is not there yet, which is said loudly).

    python scripts/bench_data.py [--suite demo] [--data-root DIR] [--random 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # data_fixtures (synthetic fallback)

import av

from geo3d.core.errors import DataError  # noqa: E402
from geo3d.data.mixture import LiberoMixture  # noqa: E402


def open_mixture(args: argparse.Namespace, tmp: Path) -> tuple[LiberoMixture, str]:
    try:
        return LiberoMixture(args.suite, args.data_root, image_size=224), f"suite {args.suite!r}"
    except DataError as e:
        if args.suite != "demo" or args.data_root:
            raise
        print(f"NOTE: demo dataset not available ({e}).\nNOTE: benchmarking a SYNTHETIC dataset instead "
              "(2 suites x 3 episodes x 120 frames, 256x256, AV1 like LIBERO).")
        from data_fixtures import make_synthetic_libero

        root = make_synthetic_libero(tmp, episodes_per_suite=3, length=120, size=256, seed=0)
        return LiberoMixture("demo", root, image_size=224), "SYNTHETIC stand-in for demo"


def bench_sequential(m: LiberoMixture) -> tuple[int, float]:
    n, t0 = 0, time.perf_counter()
    for span in m.episodes():
        for _frames, _cid in m.iter_episode(span.dataset_id, span.episode_index):
            n += 1
    return n, time.perf_counter() - t0


def bench_random(m: LiberoMixture, indices: np.ndarray, full_item: bool) -> float:
    t0 = time.perf_counter()
    for i in indices.tolist():
        if full_item:
            m[i]
        else:
            m.read_stored_frames(i)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="demo")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--random", type=int, default=300, help="random frames to read")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        m, what = open_mixture(args, Path(tmp))
        h, w = m.read_stored_frames(0).shape[1:3]
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; python {platform.python_version()}, "
              f"PyAV {av.__version__} (FFmpeg {av.library_versions.get('libavcodec')})")
        print(f"data: {what}: {len(m.datasets)} datasets, {len(m.episodes())} episodes, {len(m)} frames, "
              f"{h}x{w} x 2 cameras, versions {[d.codebase_version for d in m.datasets]}")
        n, dt_seq = bench_sequential(m)
        seq = n / dt_seq
        print(f"sequential (iter_episode, both cameras + content id):  {seq:8.1f} frames/s  ({n} frames, {dt_seq:.2f} s)")
        idx = np.random.default_rng(args.seed).integers(0, len(m), args.random)
        dt_raw = bench_random(m, idx, full_item=False)
        raw = len(idx) / dt_raw
        print(f"random (read_stored_frames, both cameras):             {raw:8.1f} frames/s  ({len(idx)} frames)")
        dt_item = bench_random(m, np.random.default_rng(args.seed + 1).integers(0, len(m), args.random), True)
        item = len(idx) / dt_item
        print(f"random (mixture[i]: + upright, resize 224, actions):   {item:8.1f} frames/s  ({len(idx)} frames)")
        print(f"ratio sequential / random: {seq / raw:.1f}x")
        m.close()


if __name__ == "__main__":
    main()
