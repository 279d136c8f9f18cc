"""The gpu tier for stage 1 (`pytest -m gpu`; skipped where `torch.cuda.is_available()` is false): `geo3d
precompute` on CUDA end to end (tiny encoder, batches across shards, padded to one shape), its tokens against
a CPU store within the documented verify atol, verify-cache --recompute on CUDA, kill -9 mid-run on CUDA
resuming to a bit-identical store, and the real MapAnything class on CUDA where it is importable.
Mirrors tests/test_precompute_e2e.py (real subprocesses) and tests/test_encoders_mapanything_real.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_encoders_mapanything_real import IMAGE, TOKENS, _demo_frames, small_weights  # noqa: F401 (fixture)
from test_precompute_e2e import _commits, _contents, _start_and_kill_after

from geo3d.encoders.mapanything import MapAnythingEncoder
from geo3d.encoders.recompute import WEIGHTS_ENV
from geo3d.features_store import FeatureStore
from geo3d.features_store.tolerance import DEFAULT_RECOMPUTE_ATOL

from data_fixtures import make_synthetic_libero
from helpers import REPO

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.is_available() is "
                                 "false here); run `pytest -m gpu` on a GPU node")]

SMALL = ["data.image_size=56", "encoder.tokens_per_view=4", "encoder.tiny.width=32", "encoder.tiny.heads=2",
         "encoder.tiny.out_dim=16", "store.shard_frames=8", "precompute.decode_workers=1"]
LENGTHS = [200, 150, 250]  # 2 suites x 600 = 1200 frames, 150 shards: long enough to kill a CUDA run mid-way
SHARDS = 150


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_synthetic_libero(tmp_path_factory.mktemp("libero"), suites=("libero_spatial", "libero_object"),
                                 episodes_per_suite=3, lengths=LENGTHS, size=64)


def _cmd(data_root: Path, store: Path, device: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "geo3d.cli", "precompute", "--suite", "demo", "--data-root", str(data_root),
            "--store", str(store), "--device", device, "--batch-size", "20", *SMALL, *extra]


def _run(cmd: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _verify(store: Path, data_root: Path, env: dict | None = None) -> dict:
    proc = subprocess.run([sys.executable, "-m", "geo3d.cli", "verify-cache", str(store), "--data-root",
                           str(data_root), "--recompute", "6", "--json", "--no-progress"], capture_output=True,
                          text=True, cwd=REPO, timeout=600, env=env)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["ok"], proc.stdout[-3000:] + proc.stderr[-2000:]
    return report


@pytest.fixture(scope="module")
def cuda_store(data_root, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("cuda") / "store.zarr"
    proc = _run(_cmd(data_root, store, "cuda"))
    assert "store complete" in proc.stdout and "on cuda" in proc.stderr
    return store


def test_precompute_on_cuda_records_its_runtime_verifies_and_matches_cpu(data_root, cuda_store, tmp_path):
    store = FeatureStore.open(cuda_store)
    assert store.spec.encoder["runtime"]["device_type"] == "cuda" and store.spec.encoder["runtime"]["gpu"]
    writer = store.read_marker(0)["writer"]
    assert writer["device"].startswith("cuda") and writer["full_batches"] is True and writer["batch_size"] == 20
    assert writer["runtime"]["cuda"] == torch.version.cuda
    report = _verify(cuda_store, data_root)  # recompute on CUDA vs a CUDA store: atol, and it says why
    assert "per batch shape" in report["recompute"]["comparison"]
    cpu_store = tmp_path / "cpu.zarr"
    _run(_cmd(data_root, cpu_store, "cpu", "encoder.tiny.dtype=bfloat16"))  # same dtype as CUDA's auto
    cuda, cpu = _contents(cuda_store), _contents(cpu_store)
    for k in cuda:  # same frames, same index; the per-frame checksums hash the token bits, which differ by rounding
        if k not in ("tokens", "checksum"):
            assert np.array_equal(cuda[k], cpu[k]), k
    a = torch.from_numpy(cuda["tokens"].view(np.int16)).view(torch.bfloat16).float()
    b = torch.from_numpy(cpu["tokens"].view(np.int16)).view(torch.bfloat16).float()
    diff = (a - b).abs()
    print(f"CUDA bf16 vs CPU bf16 tokens ({torch.cuda.get_device_name(0)}): max {diff.max():.4g}, mean "
          f"{diff.mean():.3g}, {100 * float((a != b).float().mean()):.2f}% of bf16 values differ")
    assert float(diff.max()) <= DEFAULT_RECOMPUTE_ATOL  # the tolerance verify-cache uses across device types
    cross = _verify(cpu_store, data_root)  # a CPU store recomputed on CUDA
    assert "store written on cpu, recompute on cuda" in cross["recompute"]["comparison"]


def test_kill9_mid_run_on_cuda_resumes_to_the_same_store(data_root, cuda_store, tmp_path):
    store = tmp_path / "store.zarr"
    children: list = []
    proc = _start_and_kill_after(_cmd(data_root, store, "cuda"), store, 5, children=children)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    for c in children:  # decode processes do not outlive the killed worker
        c.wait(timeout=10)
    kept = _commits(store)
    assert 5 <= len(kept) < SHARDS
    _run(_cmd(data_root, store, "cuda"))
    assert all(_commits(store)[k] == v for k, v in kept.items()), "resume rewrote a committed shard"
    mine, ref = _contents(store), _contents(cuda_store)
    for k in ref:  # full batches: every encoder call had one shape, so the resumed shards are bit-identical
        assert np.array_equal(mine[k], ref[k]), f"array {k} differs"


def test_real_mapanything_on_cuda(small_weights, data_root, tmp_path):  # noqa: F811 (the imported fixture)
    """The real class through the adapter on CUDA: bf16 tokens within the documented atol of CPU fp32, then a
    real precompute on CUDA that verify-cache recomputes cleanly (weights via GEO3D_MAPANYTHING_WEIGHTS)."""
    weights, _ = small_weights
    images = _demo_frames()
    cpu = MapAnythingEncoder(weights=weights, image_size=IMAGE, tokens_per_view=TOKENS, device="cpu",
                             dtype="float32").encode(images)
    gpu = MapAnythingEncoder(weights=weights, image_size=IMAGE, tokens_per_view=TOKENS, device="cuda",
                             dtype="bfloat16").encode(images).cpu()
    assert gpu.shape == cpu.shape and float((gpu.float() - cpu.float()).abs().max()) <= DEFAULT_RECOMPUTE_ATOL
    store = tmp_path / "store.zarr"
    small = [a for a in SMALL if not a.startswith("encoder.tiny")]
    _run([sys.executable, "-m", "geo3d.cli", "precompute", "--suite", "demo", "--data-root", str(data_root),
          "--store", str(store), "--device", "cuda", "--encoder", "mapanything", "--weights", str(weights),
          "--batch-size", "20", *small])
    _verify(store, data_root, env={**os.environ, WEIGHTS_ENV: str(weights)})
