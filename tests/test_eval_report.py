"""`geo3d report` on two real tiny training runs (qformer, pool): PNG + markdown + JSON with the right numbers,
success read from a real `geo3d eval` result when the simulator is available."""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pytest
from PIL import Image

from geo3d.core.config import PACKAGE_ROOT
from geo3d.evaluation.report import load_run

from eval_fixtures import ENV, SHARED_RUNS, evaluated_run, geo3d, run, sim_available, trained_runs

pytestmark = [pytest.mark.slow, SHARED_RUNS]  # trains real runs first (eval_fixtures)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "eval_runs"
    runs = trained_runs(base)
    if sim_available() is None:
        evaluated_run(base)  # a real eval result under run_qformer/eval_libero_spatial_step2/
    return runs


def _tail_mean(values):
    n = max(1, math.ceil(len(values) * 0.1))
    return sum(values[-n:]) / n


def test_report_compares_two_runs(runs, tmp_path):
    out = tmp_path / "rep"
    proc = run(["report", str(runs["qformer"]), str(runs["pool"]), "--out", str(out)])
    assert "report.png" in proc.stdout
    img = Image.open(out / "report.png")
    assert img.format == "PNG" and img.size[0] > 800 and img.size[1] > 600
    assert np.asarray(img.convert("L")).std() > 10  # something was drawn
    md = (out / "report.md").read_text()
    assert "| run_qformer | qformer@info_sharing | geo3d | 42 | 2 |" in md  # the label names the store's tap
    assert "| run_pool | pool@info_sharing | fork | 42 | 2 |" in md
    summary = {r["compressor"]: r for r in json.loads((out / "report.json").read_text())["runs"]}
    assert summary["qformer"]["tap"] == "info_sharing" and summary["qformer"]["label"] == "qformer@info_sharing"
    assert summary["qformer"]["preset"] == "geo3d" and summary["pool"]["preset"] == "fork"
    launch = json.loads((runs["pool"] / "provenance.json").read_text())[-1]
    assert launch["preset"] == "fork" and "git_commit" in json.dumps(launch)
    for comp, run_dir in runs.items():
        records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
        s = summary[comp]
        assert s["last_step"] == records[-1]["step"]
        assert s["final_loss"] == pytest.approx(_tail_mean([r["loss"] for r in records]))
        assert s["compressor_grad_norm"] == pytest.approx(_tail_mean([r["grad_norm"]["compressor"] for r in records]))
        layers = len(records[-1]["geom_attention_mass"])
        assert len(s["geom_attention_mass"]) == layers
        assert s["geom_attention_mass"]["0"] == pytest.approx(
            _tail_mean([r["geom_attention_mass"][0] for r in records]))
    if sim_available() is None:
        res = json.loads((runs["qformer"] / "eval_libero_spatial_step2" / "results.json").read_text())
        assert summary["qformer"]["success"]["libero_spatial"]["episodes"] == res["summary"]["episodes"]
        assert "libero_spatial success" in md and summary["pool"]["success"] == {}


def test_report_refuses_a_directory_that_is_not_a_run(tmp_path):
    proc = subprocess.run(geo3d("report", str(tmp_path), "--out", str(tmp_path / "r")), cwd=PACKAGE_ROOT,
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 2 and "metrics.jsonl is missing" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_report_uses_complete_evaluations_of_the_latest_step(runs, tmp_path):
    if sim_available() is not None:
        pytest.skip("needs a real `geo3d eval` result (LIBERO simulator not importable)")

    src = runs["qformer"] / "eval_libero_spatial_step2" / "results.json"
    res = json.loads(src.read_text())
    partial = runs["qformer"] / "eval_libero_spatial_step9"  # an interrupted later evaluation
    partial.mkdir(exist_ok=True)
    (partial / "results.json").write_text(json.dumps({**res, "step": 9, "complete": False}))
    try:
        success = load_run(runs["qformer"]).success["libero_spatial"]
        assert success["step"] == 2 and success["path"] == str(src)
    finally:
        (partial / "results.json").unlink()
        partial.rmdir()
