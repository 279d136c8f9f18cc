"""`make gpu-check` (scripts/gpu_check.py) cannot rot: its tiny mode runs every section end to end here (the same
code paths as on a GPU: a model directory loaded through model.vlm.source, timed training steps with FLOP
counting and the memory estimate, a real `geo3d precompute`, two real `geo3d train` runs, Policy.from_pretrained and
`geo3d serve`), and full mode is refused with exit 2 where there is no CUDA."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from geo3d.core.config import PACKAGE_ROOT
from helpers import subprocess_env

SCRIPT = PACKAGE_ROOT / "scripts" / "gpu_check.py"


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=PACKAGE_ROOT, capture_output=True, text=True,
                          timeout=timeout, env=subprocess_env())


@pytest.mark.slow  # ~1 min: three geo3d subprocesses and a server
def test_tiny_mode_runs_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    r = _run("--out", str(out), "--workdir", str(tmp_path))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    sec = res["sections"]
    assert res["mode"] == "tiny" and all(v["ok"] for v in sec.values()), {k: v.get("error") for k, v in sec.items()}
    assert sec["matmul"]["result"]["tflops"] > 0
    rows = sec["steps"]["result"]["rows"]
    assert {(x["compressor"], x["batch"], x["grad_checkpointing"]) for x in rows} == \
        {(c, b, g) for c in ("qformer", "none") for b in (2, 4) for g in (False, True)}
    for x in rows:
        assert x["ms_per_step"] > 0 and 0 < x["mfu"] < 1 and x["tflop_per_step"] > 0 and x["estimate_allocated_gib"] > 0
        assert x["peak_allocated_gib"] is None  # a CPU has no CUDA allocator peak: not measured, not estimated
    ckpt = {x["grad_checkpointing"]: x["tflop_per_step"] for x in rows if x["compressor"] == "qformer" and x["batch"] == 4}
    assert ckpt[True] == ckpt[False]  # model FLOPs: recomputation is not counted as useful work
    feed = sec["feed"]["result"]
    assert 0 <= feed["data_wait_share"] < 1 and feed["samples_per_s"] > 0 and feed["checkpoints_written"] == []
    for k in ("in_process", "geo3d_serve"):
        assert 0 < sec["serve"]["result"][k]["p50_ms"] <= sec["serve"]["result"][k]["p95_ms"]
    assert sec["processor"]["result"]["picked"].startswith("Qwen2VLImageProcessor")
    assert "train step" in r.stdout and "serve geo3d_serve" in r.stdout and "not GPU figures" in r.stdout
    assert list(tmp_path.glob("geo3d-gpu-check-*")) == []  # the scratch dir is removed


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: --full would run")
def test_full_mode_without_cuda_and_unknown_sections_exit_2(tmp_path):
    r = _run("--full", "--out", str(tmp_path / "x.json"))
    assert r.returncode == 2 and r.stderr.startswith("error: --full needs a CUDA GPU"), r.stderr
    r = _run("--only", "env,bogus", "--out", str(tmp_path / "x.json"))
    assert r.returncode == 2 and "unknown sections ['bogus']" in r.stderr
    assert not (tmp_path / "x.json").exists()  # nothing written for bad input
    r = _run("--only", "env", "--out", str(tmp_path / "x.json"))  # no CUDA: --tiny is the default
    assert r.returncode == 0 and json.loads((tmp_path / "x.json").read_text())["mode"] == "tiny"
