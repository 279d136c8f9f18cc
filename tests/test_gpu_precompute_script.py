"""scripts/gpu_precompute.py in tiny mode (CI, no GPU): every code path of the stage-1 GPU figures runs end to
end at toy size and writes its JSON; the FLOPs it counts per frame match the model's arithmetic."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import REPO


def tiny_model_flops(width: int, depth: int, heads: int, out_dim: int, image: int, views: int = 2) -> int:
    """Matmul + attention FLOPs of one frame through TinyGeometryModel (norms and pooling not counted)."""
    patches = (image // 14) ** 2
    n = patches + 1  # + the per-view register (cls) token

    def block(tokens: int, d: int) -> int:  # qkv, proj, 2 MLP layers (ratio 4); attention 2 bmm of tokens^2 x d
        return 2 * tokens * (3 * d * d + d * d + 8 * d * d) + 4 * tokens * tokens * d

    vit = views * (patches * 2 * 3 * 14 * 14 * width + depth * block(n, width))
    g = views * n + 1  # all views + the scale token
    embed = 2 * g * width * out_dim if width != out_dim else 0
    sharing = sum(block(g, out_dim) if i % 2 == 0 else views * block(n, out_dim) for i in range(depth))
    return vit + embed + sharing


@pytest.mark.slow  # a real process (~15 s): the script as a user runs it
def test_tiny_mode_runs_every_path_and_writes_its_json(tmp_path):
    out = tmp_path / "gpu_precompute.json"
    proc = subprocess.run([sys.executable, "scripts/gpu_precompute.py", "--tiny", "--compile", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(out.read_text())
    assert rec["tiny"] and rec["machine"]["runtime"]["device_type"] == rec["machine"]["device"].split(":")[0]
    assert rec["matmul_bf16"]["flops_per_s"] > 0 and rec["decode_frames_per_cpu_s"] > 0
    assert rec["flops_per_frame"] == tiny_model_flops(32, 1, 2, 16, 56)  # TOY: torch's counter = the arithmetic
    rows = rec["throughput"]
    assert [(r["encoder"], r["batch"]) for r in rows] == [(e, b) for e in ("eager", "torch.compile") for b in (2, 4, 8)]
    assert all(r["fits"] and r["frames_per_s"] > 0 and 0 < r["mfu"] < 1 for r in rows)
    e2e = rec["end_to_end"]
    assert [r["setting"] for r in e2e] == ["configured", "wide"]
    assert all(r["end_to_end_fps"] > 0 and r["encoder_only_fps"] > 0 and r["store_bytes"] > 0 for r in e2e)
    assert rec["tokens"] and rec["tokens"][0]["pair"] == "cpu bf16 vs cpu fp32" and rec["tokens"][0]["frames"] == 4
    assert "MFU" in proc.stdout and "ratio" in proc.stdout


def test_full_size_stand_in_flops_are_mapanythings():
    """The stand-in of configs/standin_full.yaml costs ~1.2 TFLOP per 2-view 224^2 frame, as MapAnything does."""
    flops = tiny_model_flops(1536, 20, 24, 1536, 224)
    assert 1.1e12 < flops < 1.3e12
