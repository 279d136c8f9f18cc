"""The README's main command, `geo3d demo`, end to end on the shipped demo data (the slow tier)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # precompute + verify + train in real subprocesses, twice


def test_demo_end_to_end_and_rerun_reuses_the_store(tmp_path):
    """The README's main command on the shipped data: precompute -> verify -> train, a checkpoint at the end;
    a second run reuses the verified store (nothing re-encoded) and trains into a new run dir."""
    def demo() -> str:
        r = subprocess.run([sys.executable, "-m", "geo3d.cli", "demo", "--out", str(tmp_path), "--max-steps", "2"],
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return r.stdout

    first = demo()
    assert "result: CLEAN" in first and "demo finished" in first
    runs = sorted(tmp_path.glob("train_qformer_*"))
    assert len(runs) == 1 and list(runs[0].glob("checkpoints/steps_2/model.safetensors"))
    second = demo()
    assert "(0 to do)" in second and "result: CLEAN" in second
    assert len(sorted(tmp_path.glob("train_qformer_*"))) == 2  # the first run is still there, untouched
