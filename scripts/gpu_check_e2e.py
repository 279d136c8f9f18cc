"""`make gpu-check`, part 2: the real verbs end to end — a features store from the tiny encoder at the full token
shape, a short `geo3d train` of the full-size model fed by the configured DataLoader workers (data-wait share,
samples/s from its metrics.jsonl), a one-step frozen-VLM `geo3d train` whose checkpoint is served
(`Policy.from_pretrained(...).predict_action` in process, then `geo3d serve` on localhost: p50/p95), and which image
processor backend transformers picks here (and, when torchvision imports, how its pixels differ from PIL's).
Full mode uses the shipped demo data; tiny mode a small synthetic LIBERO set (the same verbs, seconds on CPU).
"""

from __future__ import annotations

import importlib.util
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from transformers.models.qwen2_vl import Qwen2VLImageProcessor, Qwen2VLImageProcessorPil

from geo3d.core.config import PACKAGE_ROOT
from geo3d.data.suites import DEMO_DATA_ROOT
from geo3d.evaluation.client import RemotePolicy
from geo3d.policy.pretrained import Policy
from geo3d.policy.processor_policy import load_hf_processor
from geo3d.policy.run_dir import read_metrics

INSTRUCTION = "put the black bowl on the plate"
FEED_STEPS, FEED_LOG = 30, 5  # full mode: 30 optimizer steps (batch 4 x accum 4), a record every 5 steps


def geo3d(args: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "geo3d.cli", *args], cwd=PACKAGE_ROOT, capture_output=True,
                       text=True, timeout=timeout, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"geo3d {' '.join(args[:3])} ... exited {r.returncode}: {r.stderr.strip()[-1500:]}")
    return r


def data_args(work: Path, full: bool) -> tuple[list[str], list[str]]:
    """(data flags, model/geometry overrides) for the precompute and train runs."""
    if full:
        return ["--suite", "demo", "--data-root", str(DEMO_DATA_ROOT)], ["encoder.tiny.out_dim=1536"]
    sys.path.insert(0, str(PACKAGE_ROOT / "tests"))
    from data_fixtures import make_synthetic_libero  # noqa: E402  (the tests' synthetic LIBERO writer)
    make_synthetic_libero(work / "data", suites=("libero_spatial",), episodes_per_suite=2, length=12, size=64)
    return (["--suite", "libero_spatial", "--data-root", str(work / "data")],
            ["data.image_size=56", "encoder.tokens_per_view=16"])


def make_store(work: Path, full: bool) -> tuple[Path, list[str], float]:
    data, pre = data_args(work, full)
    store = work / "store"
    t0 = time.perf_counter()
    geo3d(["precompute", *data, "--encoder", "tiny", "--store", str(store), *pre], timeout=900)
    return store, data, time.perf_counter() - t0


def train_args(data: list[str], store: Path, out: Path, model_dir: Path, full: bool, steps: int) -> list[str]:
    args = ["train", "--config", "train/ablation_qformer", *data, "--store", str(store), "--out", str(out),
            "--max-steps", str(steps), f"model.vlm.source={model_dir}", "train.store_check_frames=16"]
    if not full:
        args += ["model_config=tiny", "model.geometry.tokens_per_view=16", "model.geometry.dim=128",
                 "data.image_size=56", "train.num_workers=0", "train.per_device_batch_size=2"]
    return args


def feed(work: Path, store: Path, data: list[str], model_dir: Path, full: bool) -> dict[str, Any]:
    """A short real `geo3d train` (no final checkpoint): data wait vs compute from its metrics.jsonl, with the
    first record (start-up: allocator, kernels' first launch) left out."""
    steps, log = (FEED_STEPS, FEED_LOG) if full else (6, 2)
    out = work / "feed_run"
    t0 = time.perf_counter()
    geo3d(train_args(data, store, out, model_dir, full, steps) + ["train.save_final=false",
          f"train.log_interval={log}", f"train.save_interval={10 * steps}"], timeout=1800)
    wall = time.perf_counter() - t0
    records = read_metrics(out)[1:]
    data_s = sum(r["time_data_s"] for r in records)
    compute_s = sum(r["time_compute_s"] for r in records)
    samples = records[-1]["samples"] - read_metrics(out)[0]["samples"]
    cfg = OmegaConf.load(out / "resolved_config.yaml")
    return {"steps": steps, "records_used": len(records), "data_wait_share": data_s / (data_s + compute_s),
            "samples_per_s": samples / (data_s + compute_s), "num_workers": int(cfg.train.num_workers),
            "per_device_batch_size": int(cfg.train.per_device_batch_size),
            "grad_accum_steps": int(cfg.train.grad_accum_steps), "wall_s_incl_startup": wall,
            "checkpoints_written": sorted(p.name for p in (out / "checkpoints").glob("steps_*"))
            if (out / "checkpoints").is_dir() else []}


def serve_checkpoint(work: Path, store: Path, data: list[str], model_dir: Path, full: bool) -> Path:
    """One step with the VLM frozen (bf16 weights, no VLM optimizer state: a 19 GB checkpoint at full size
    instead of 57 GB), saved: the checkpoint the serving figures load."""
    out = work / "serve_run"
    geo3d(train_args(data, store, out, model_dir, full, 1) + ["train.freeze=[vlm]", "train.save_interval=1"],
          timeout=1800)
    return out


def _percentiles(times: list[float]) -> dict[str, float]:
    ms = sorted(1e3 * t for t in times)
    return {"p50_ms": statistics.median(ms), "p95_ms": ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))],
            "calls": len(ms)}


def serve_latency(run: Path, device: str, calls: int) -> dict[str, Any]:
    """Policy.from_pretrained(...).predict_action, batch 1, 4 Euler steps (the checkpoint's num_inference_steps), geometry
    given as tokens (the policy alone), after 3 warm-up calls."""
    policy = Policy.from_pretrained(run, device=device)
    g = policy.config.model.geometry
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (policy.num_views, policy.image_size, policy.image_size, 3), dtype=np.uint8)
    state = np.zeros(policy.state_dim, np.float32)
    geometry = torch.randn(int(g.views), int(g.tokens_per_view), int(g.dim))
    times = []
    for i in range(calls + 3):
        t0 = time.perf_counter()
        policy.predict_action(images, INSTRUCTION, state, geometry=geometry)  # returns numpy: synchronised
        if i >= 3:
            times.append(time.perf_counter() - t0)
    steps = int(policy.config.model.action_head.num_inference_steps)
    del policy
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {**_percentiles(times), "euler_steps": steps, "batch": 1}


def serve_remote(run: Path, device: str, calls: int) -> dict[str, Any]:
    """The same through `geo3d serve` on localhost (websocket + msgpack; the server rebuilds the store's
    tiny encoder for the live geometry tokens, so this includes encoding the frame)."""
    proc = subprocess.Popen([sys.executable, "-m", "geo3d.cli", "serve", "--ckpt", str(run), "--host",
                             "127.0.0.1", "--port", "0", "--device", device], cwd=PACKAGE_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url, lines = _wait_for_url(proc, timeout=600)
        threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()  # keep the pipe drained
        client = RemotePolicy(url)
        size, views = int(client.image_size), int(client.num_views)
        images = np.random.default_rng(0).integers(0, 255, (views, size, size, 3), dtype=np.uint8)
        state = np.zeros(int(client.state_dim), np.float32)
        times = []
        for i in range(calls + 3):
            t0 = time.perf_counter()
            client.predict_action(images, INSTRUCTION, state)
            if i >= 3:
                times.append(time.perf_counter() - t0)
        return {**_percentiles(times), "includes": "websocket round trip + tiny geometry encoder + policy"}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _wait_for_url(proc: subprocess.Popen, timeout: float) -> tuple[str, list[str]]:
    deadline, lines = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        m = re.search(r"on (ws://\S+)", line)
        if m:
            return m.group(1), lines
    raise RuntimeError("geo3d serve did not start: " + "".join(lines)[-1500:])


def image_processors(model_dir: Path) -> dict[str, Any]:
    """The image processor class the policy's processor loads here, and (torchvision importable) the largest
    pixel difference between transformers' PIL and torchvision backends on the same 224^2 frames."""
    picked = type(load_hf_processor(str(model_dir)).image_processor).__name__
    out: dict[str, Any] = {"picked": picked, "torchvision": importlib.util.find_spec("torchvision") is not None}
    if not out["torchvision"]:
        out["pixel_max_abs_diff"] = None
        out["note"] = "torchvision not installed: only the PIL backend exists here"
        return out
    frames = list(np.random.default_rng(0).integers(0, 255, (4, 224, 224, 3), dtype=np.uint8))
    pil = Qwen2VLImageProcessorPil.from_pretrained(model_dir)(frames, return_tensors="pt")["pixel_values"]
    tv = Qwen2VLImageProcessor.from_pretrained(model_dir)(frames, return_tensors="pt")["pixel_values"]
    out["pixel_max_abs_diff"] = float((pil.float() - tv.float()).abs().max())
    out["pixel_shapes_equal"] = tuple(pil.shape) == tuple(tv.shape)
    return out
