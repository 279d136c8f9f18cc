"""`geo3d report` on synthetic runs with known answers: labels carry the tap, seeds aggregate, paired comparisons
give the hand-computed McNemar p and the Newcombe interval, the 3D-vs-2D comparison is made, and runs evaluated
with other settings or init states are flagged and refused, never paired."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geo3d.core.config import PACKAGE_ROOT
from geo3d.evaluation.stats import PairedTable, newcombe_paired

from eval_fixtures import ENV, geo3d

pytestmark = pytest.mark.slow  # `geo3d report` subprocesses (matplotlib)

TASKS, INITS = 10, 25  # 250 episodes per suite and seed
SUITE = "libero_spatial"


def _outcomes(a: int, b: int, c: int, d: int) -> tuple[list[bool], list[bool]]:
    """Episode outcomes of X and Y in episode order with the given paired table."""
    assert a + b + c + d == TASKS * INITS
    x = [True] * a + [True] * b + [False] * c + [False] * d
    y = [True] * a + [False] * b + [True] * c + [False] * d
    return x, y


def _run(root: Path, name: str, compressor: str, tap: str | None, seed: int, successes: list[bool],
         settings: dict | None = None, inits: int = INITS) -> Path:
    run = root / name
    (run / f"eval_{SUITE}_step100").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s, "grad_norm": {"compressor": 0.5},
                                                           "geom_attention_mass": [0.1, 0.2]}) + "\n"
                                               for s in (10, 20, 30)))
    (run / "resolved_config.yaml").write_text(f"preset: geo3d\nmodel:\n  compressor:\n    type: {compressor}\n"
                                              f"train:\n  seed: {seed}\n")
    store = None if tap is None else {"tap": tap, "encoder": {"name": "tiny", "tap": tap}}
    (run / "provenance.json").write_text(json.dumps([{"store": store}]))
    episodes = [{"task_id": t, "episode": i, "success": successes[t * INITS + i], "steps": 10, "seed": 7000 + i}
                for t in range(TASKS) for i in range(inits)]
    settings = {"max_steps": 220, "settle_steps": 10, "replan_steps": 8, "gripper_sign": 1.0, "binarize_gripper": True,
                "render_size": 256, "seed": 7, **(settings or {})}
    res = {"suite": SUITE, "complete": True, "step": 100, "settings": settings, "episodes": episodes,
           "summary": {"episodes": len(episodes), "successes": sum(e["success"] for e in episodes)}}
    (run / f"eval_{SUITE}_step100" / "results.json").write_text(json.dumps(res))
    return run


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    # seed 0: qformer@info_sharing vs none: a=100, b=20, c=8, d=122; seed 1: a=90, b=15, c=10, d=135
    x0, n0 = _outcomes(100, 20, 8, 122)
    x1, n1 = _outcomes(90, 15, 10, 135)
    e0, _ = _outcomes(100, 12, 8, 130)  # the encoder tap, seed 0, against the same `none` episodes
    runs = [_run(root, "none_s0", "none", None, 0, n0), _run(root, "none_s1", "none", None, 1, n1),
            _run(root, "qformer_is_s0", "qformer", "info_sharing", 0, x0),
            _run(root, "qformer_is_s1", "qformer", "info_sharing", 1, x1),
            _run(root, "qformer_enc_s0", "qformer", "encoder", 0, e0),
            # seed 1 of the encoder tap was evaluated with another step cap: flagged, never paired
            _run(root, "qformer_enc_s1", "qformer", "encoder", 1, e0, settings={"max_steps": 100}),
            # a pool run evaluated on fewer init states than its baseline: refused
            _run(root, "pool_s0", "pool", "info_sharing", 0, x0, inits=20)]
    out = root / "report"
    proc = subprocess.run(geo3d("report", *map(str, runs), "--out", str(out)), cwd=PACKAGE_ROOT, capture_output=True,
                          text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "report.json").read_text()), (out / "report.md").read_text()


def _exact_mcnemar(b: int, c: int) -> float:
    return min(1.0, 2 * sum(math.comb(b + c, i) for i in range(min(b, c) + 1)) / 2 ** (b + c))


def test_labels_carry_the_tap_and_seeds_aggregate(report):
    out, rep, md = report
    labels = {r["run_dir"].rsplit("/", 1)[-1]: r["label"] for r in rep["runs"]}
    assert labels["qformer_is_s0"] == "qformer@info_sharing" and labels["qformer_enc_s1"] == "qformer@encoder"
    assert labels["none_s0"] == "none"
    row = next(r for r in rep["success"] if r["config"] == "qformer@info_sharing [geo3d]")
    assert row["seeds"] == [0, 1] and row["episodes"] == 500 and row["successes"] == 120 + 105
    assert row["seed_mean"] == pytest.approx((120 / 250 + 105 / 250) / 2)
    assert row["seed_sd"] == pytest.approx(np.std([120 / 250, 105 / 250], ddof=1))
    lo, hi = row["ci"]
    assert lo < 225 / 500 < hi and 0.40 < lo and hi < 0.50
    assert "| qformer@info_sharing [geo3d] | libero_spatial | 2 | s0: 120/250, s1: 105/250 |" in md
    img = Image.open(out / "report.png")
    assert img.format == "PNG" and img.size[0] > 1500 and np.asarray(img.convert("L")).std() > 10


def test_paired_comparison_against_none_has_the_known_answer(report):
    _, rep, md = report
    c = next(c for c in rep["comparisons"] if c["a"].startswith("qformer@info_sharing") and c["b"].startswith("none"))
    assert c["seeds"] == [0, 1] and c["pairs"] == 500
    assert c["table"] == {"a": 190, "b": 35, "c": 18, "d": 257}
    assert c["difference"] == pytest.approx(17 / 500)
    assert c["p_mcnemar"] == pytest.approx(_exact_mcnemar(35, 18))
    assert c["per_seed_difference"] == {"0": pytest.approx(12 / 250), "1": pytest.approx(5 / 250)}

    assert c["ci"] == pytest.approx(list(newcombe_paired(PairedTable(190, 35, 18, 257))))
    p = f"{_exact_mcnemar(35, 18):.2g}"
    sig = "significant" if _exact_mcnemar(35, 18) < 0.05 else "not significant"
    assert "qformer@info_sharing − none on libero_spatial: +3.4 pts [" in md
    assert f"p = {p}, {sig} at 500 paired episodes (2 seeds)" in md
    assert "paired episodes for 80% power" in md


def test_the_3d_vs_2d_comparison_pairs_only_comparable_seeds(report):
    _, rep, md = report
    (c,) = [c for c in rep["comparisons"]
            if c["a"].startswith("qformer@info_sharing") and c["b"].startswith("qformer@encoder")]
    # seed 1 of the encoder tap ran with another step cap: left out, named; seed 0 is paired
    assert c["seeds"] == [0] and c["left_out"] == ["seed 1: evaluated with different settings (max_steps: 220 vs 100)"]
    # x0 succeeds on the first 120 episodes, e0 on the first 112: 112 both, 8 only info_sharing, none only encoder
    assert c["table"] == {"a": 112, "b": 8, "c": 0, "d": 130}
    assert c["p_mcnemar"] == 2 / 2 ** 8 == _exact_mcnemar(8, 0)
    assert "3D or 2D" in c["question"] and "qformer@info_sharing − qformer@encoder on libero_spatial: +3.2 pts" in md
    assert any(f.startswith("libero_spatial: qformer_enc_s1 was evaluated differently") and "max_steps=100" in f
               for f in rep["flags"])
    pool = next(c for c in rep["refused"] if c["a"].startswith("pool@info_sharing"))
    assert "different init-state sets (200 vs 250 episodes" in pool["refused"]
    assert any(f.startswith("libero_spatial: pool_s0 was evaluated differently") and "200 episodes" in f
               for f in rep["flags"])
    assert "- refused: pool@info_sharing [geo3d] − none [geo3d] on libero_spatial" in md


def test_report_refuses_the_same_run_twice(report, tmp_path):
    out, rep, _ = report
    run = rep["runs"][0]["run_dir"]
    proc = subprocess.run(geo3d("report", run, run, "--out", str(tmp_path / "r")), cwd=PACKAGE_ROOT,
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 2 and "given twice" in proc.stderr and not (tmp_path / "r").exists()
