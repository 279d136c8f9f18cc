"""Benchmark the stage-2 data path, side by side in one run:

1. loader throughput (samples/s) with and without cached geometry tokens — same frames, sampler, batch size,
   workers and VLM processor; the only difference is reading each frame's [V,T,D] tokens from the store.
   Goal: geometry adds <= 10%. The two loaders are interleaved batch by batch so machine noise hits both.
2. samples/s per DataLoader worker with the training loader settings (train.num_workers / pin_memory /
   persistent_workers / prefetch_factor, through geo3d.train.launch.loader_options) at --worker-counts.
3. peak RSS of a real `geo3d train` process over one pass (epoch) of the dataset.

    python scripts/bench_train_loader.py                         # demo suite; builds a tiny-encoder store
    python scripts/bench_train_loader.py --suite libero_10 --data-root DIR --store PATH --workers 8
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
from torch.utils.data import DataLoader

from geo3d.core.config import data_root_from
from geo3d.data.mixture import LiberoMixture
from geo3d.data.norm_stats import compute_norm_stats
from geo3d.policy.modeling_policy import build_policy
from geo3d.policy.processor_policy import NormalizationSpec, PolicyProcessor
from geo3d.train import preflight
from geo3d.train.dataset import GeoTrainDataset, TrainCollator
from geo3d.train.launch import loader_options
from geo3d.train.run_config import compose_train_config
from geo3d.train.sampler import ResumableSampler

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="demo")
    p.add_argument("--data-root", default=None)
    p.add_argument("--store", default=None, help="features store (default: `geo3d precompute --encoder tiny` "
                                                 "into a temp dir)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--batches", type=int, default=25, help="timed batches per mode per repeat")
    p.add_argument("--repeats", type=int, default=2, help="repeats (batches x repeats interleaved batches per mode)")
    p.add_argument("--skip-training", action="store_true", help="skip part 3 (one training epoch)")
    p.add_argument("--worker-counts", default="0,1,2", help="DataLoader workers to time for the per-worker line")
    p.add_argument("--config", action="append", default=[], help="extra train configs (as geo3d train)")
    p.add_argument("overrides", nargs="*", help="key=value overrides (as geo3d train)")
    return p.parse_args()


def geo3d(*args: str) -> list[str]:
    return [sys.executable, "-m", "geo3d.cli", *args]


def ensure_store(a: argparse.Namespace, tmp: Path) -> str:
    if a.store:
        return a.store
    store = tmp / "store"
    cmd = geo3d("precompute", "--suite", a.suite, "--encoder", "tiny", "--store", str(store))
    if a.data_root:
        cmd += ["--data-root", a.data_root]
    print("building a store:", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
    return str(store)


def _collate_for(cfg):
    """The training collate: the policy's processor pipeline over the mixture's exact norm stats."""
    stats = compute_norm_stats(preflight.open_mixture(cfg))
    spec = NormalizationSpec.from_cfg(cfg.model.normalization)
    return TrainCollator(PolicyProcessor(build_policy(cfg.model).processor, stats, spec))


def loader_throughput(a: argparse.Namespace, store: str) -> dict[str, list[float]]:
    """Per-batch load times of two loaders over the SAME frames, interleaved batch by batch (without, with,
    without, ...) so that load changes on a shared machine hit both modes equally."""
    cfg = compose_train_config(a.config, a.overrides, {"suite": a.suite, "data_root": a.data_root, "store": store})
    mixture = preflight.open_mixture(cfg)
    preflight.open_checked_store(cfg, store, mixture)
    collate = _collate_for(cfg)
    iters = {}
    for mode, path in (("without_geometry", None), ("with_geometry", store)):
        # each mode gets its own mixture: a shared one would share (and fight over) the video decoder cache
        loader = DataLoader(GeoTrainDataset(preflight.open_mixture(cfg), path), batch_size=a.batch_size,
                            sampler=ResumableSampler(len(mixture), seed=0), num_workers=a.workers,
                            collate_fn=collate, prefetch_factor=2 if a.workers else None,
                            generator=torch.Generator().manual_seed(0))
        iters[mode] = iter(loader)
        next(iters[mode])  # worker start-up and first opens are not throughput
    times: dict[str, list[float]] = {m: [] for m in iters}
    for _ in range(a.batches * a.repeats):
        for mode, it in iters.items():
            t = time.perf_counter()
            next(it)
            times[mode].append(time.perf_counter() - t)
    reader = GeoTrainDataset(mixture, store).reader()
    t = time.perf_counter()
    for i in range(min(len(mixture), 200)):
        reader[i]
    times["store_read_per_frame"] = [(time.perf_counter() - t) / min(len(mixture), 200)]
    return times


def per_worker_throughput(a: argparse.Namespace, store: str) -> dict[int, float]:
    """samples/s of the training DataLoader (its settings from the config) at each worker count, after the
    workers' start-up batch; the counts are timed one after another (not interleaved: they compete for cores)."""
    rates = {}
    for workers in [int(w) for w in a.worker_counts.split(",")]:
        cfg = compose_train_config(a.config, [*a.overrides, f"train.num_workers={workers}"],
                                   {"suite": a.suite, "data_root": a.data_root, "store": store})
        dataset = GeoTrainDataset(preflight.open_mixture(cfg), store)
        loader = DataLoader(dataset, batch_size=a.batch_size, sampler=ResumableSampler(len(dataset), seed=0),
                            collate_fn=_collate_for(cfg), generator=torch.Generator().manual_seed(0),
                            **loader_options(cfg.train))
        it = iter(loader)
        next(it)
        t = time.perf_counter()
        for _ in range(a.batches):
            next(it)
        rates[workers] = a.batches * a.batch_size / (time.perf_counter() - t)
        del it, loader
    return rates


def peak_rss_of_training(a: argparse.Namespace, store: str, tmp: Path) -> dict[str, float]:
    """Run `geo3d train` for one epoch; poll the RSS of its process tree (psutil) every 20 ms."""
    cfg = compose_train_config(a.config, a.overrides, {"suite": a.suite, "data_root": a.data_root, "store": store})
    frames = len(LiberoMixture(cfg.data.suite, data_root_from(cfg), image_size=None))
    per_step = a.batch_size * int(cfg.train.grad_accum_steps)
    steps = math.ceil(frames / per_step)
    cmd = geo3d("train", "--suite", a.suite, "--store", store, "--out", str(tmp / "run"), "--max-steps", str(steps),
                *(["--data-root", a.data_root] if a.data_root else []), *sum((["--config", c] for c in a.config), []),
                f"train.per_device_batch_size={a.batch_size}", f"train.num_workers={a.workers}",
                f"train.save_interval={steps}", *a.overrides)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = {"process": 0, "tree": 0}
    stop = threading.Event()

    def poll() -> None:
        p = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                own = p.memory_info().rss
                tree = own + sum(c.memory_info().rss for c in p.children(recursive=True))
            except psutil.Error:
                break
            peak["process"], peak["tree"] = max(peak["process"], own), max(peak["tree"], tree)
            time.sleep(0.02)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    t = time.perf_counter()
    _, err = proc.communicate()
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"geo3d train failed:\n{err[-3000:]}")
    return {"frames": frames, "steps": steps, "seconds": time.perf_counter() - t,
            "peak_rss_mib": peak["process"] / 2**20, "peak_rss_tree_mib": peak["tree"] / 2**20}


def main() -> None:
    a = parse()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="bench_train_") as d:
        tmp = Path(d)
        store = ensure_store(a, tmp)
        times = loader_throughput(a, store)
        n = len(times["with_geometry"])
        med = {m: statistics.median(times[m]) for m in ("without_geometry", "with_geometry")}
        tot = {m: sum(times[m]) for m in ("without_geometry", "with_geometry")}
        print(f"\nloader ({a.suite}, batch {a.batch_size}, workers {a.workers}; {n} batches per mode, interleaved):")
        for m in ("without_geometry", "with_geometry"):
            print(f"  {m.replace('_', ' '):17s} {a.batch_size / med[m]:8.1f} samples/s (median batch), "
                  f"{n * a.batch_size / tot[m]:8.1f} samples/s (overall)")
        print(f"  store read alone: {1e3 * times['store_read_per_frame'][0]:.2f} ms/frame")
        for label, d in (("median", med), ("overall", tot)):
            overhead = d["with_geometry"] / d["without_geometry"] - 1.0
            print(f"  geometry overhead ({label}): {100 * overhead:+.1f}% time per sample (goal <= +10%): "
                  f"{'MET' if overhead <= 0.10 else 'NOT MET'}")
        rates = per_worker_throughput(a, store)
        print(f"\ntraining DataLoader (train.* loader settings, batch {a.batch_size}, {a.batches} batches each, "
              f"{os.cpu_count()} CPUs):")
        for w, r in rates.items():
            per = f"{r / w:8.1f} samples/s per worker" if w else "(in the training process)"
            print(f"  workers {w}: {r:8.1f} samples/s  {per}")
        if a.skip_training:
            return
        rss = peak_rss_of_training(a, store, tmp)
        print(f"\ntraining one pass ({rss['frames']} frames, {rss['steps']} steps, {rss['seconds']:.1f} s): "
              f"peak RSS {rss['peak_rss_mib']:.0f} MiB (process), {rss['peak_rss_tree_mib']:.0f} MiB (with workers)")


if __name__ == "__main__":
    main()
