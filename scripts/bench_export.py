"""`geo3d export` memory and speed: peak RSS stays flat when the store grows 4x (streaming, one shard at a time).

Builds two synthetic stores (N and 4N frames of [2,196,D] bf16) and exports each in every format in a child
process, printing the child's peak RSS and throughput side by side.
    python scripts/bench_export.py [--frames 256] [--dim 256]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from geo3d.features_store import FeatureStore, StoreLayout, StoreSpec

CHILD = ("import resource, sys, time; from pathlib import Path; from geo3d.features_store.export import run_export; "
         "t = time.perf_counter(); run_export(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), progress=False); "
         "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")


def make_store(path: Path, frames: int, dim: int) -> int:
    spec = StoreSpec(frames=frames, views=2, tokens=196, dim=dim, encoder={"name": "bench", "fingerprint": "0",
                     "config": {}}, preprocessing={}, dataset={"suite": "demo", "datasets": [
                         {"name": "libero_spatial_no_noops_1.0.0_lerobot", "num_frames": frames}]},
                     layout=StoreLayout(shard_frames=64))
    store = FeatureStore.open_or_create(path, spec)
    g = torch.Generator().manual_seed(0)
    for i in range(spec.num_shards):
        r = store.shard_range(i)
        n = len(r)
        store.write_shard(i, torch.randn((n, 2, 196, dim), generator=g).to(torch.bfloat16),
                          {"dataset_id": np.zeros(n, np.int64), "episode_index": np.full(n, i, np.int64),
                           "frame_index": np.arange(n), "content_id": np.arange(r.start, r.stop, dtype=np.uint64)})
    return spec.frames * spec.frame_nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=256)
    ap.add_argument("--dim", type=int, default=256)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        for frames in (args.frames, 4 * args.frames):
            store = Path(tmp) / f"store{frames}"
            size = make_store(store, frames, args.dim)
            for fmt in ("hdf5", "npy", "pt"):
                out = Path(tmp) / f"out{frames}.{fmt}"
                proc = subprocess.run([sys.executable, "-c", CHILD, str(store), fmt, str(out)], capture_output=True,
                                      text=True, check=True)
                secs, rss_kb = proc.stdout.split()
                print(f"{frames:6d} frames ({size / 2**20:7.1f} MiB tokens)  {fmt:5s}  peak RSS {int(rss_kb) / 1024:7.1f} MiB"
                      f"  {size / 2**20 / float(secs):7.1f} MiB/s (incl. read-back verification)")


if __name__ == "__main__":
    main()
