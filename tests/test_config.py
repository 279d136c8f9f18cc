"""The one config system: YAML files merged in order, flags, then dotlist overrides; resolved copy saved."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from geo3d.cliutil import build_config
from geo3d.config import ConfigError, data_root_from, load_config, save_resolved


def test_merge_order_files_flags_overrides(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("data: {suite: demo, action_horizon: 8}\ntrain: {lr: 1.0e-4, steps: 10}\n")
    b = tmp_path / "b.yaml"
    b.write_text("train: {steps: 20}\n")
    cfg = build_config(["data"], [a, b], ["train.lr=3e-4"], {"data.suite": "libero_10", "train.seed": None})
    assert cfg.data.suite == "libero_10"  # explicit flag beats the files
    assert cfg.train.steps == 20  # later file beats earlier
    assert cfg.train.lr == pytest.approx(3e-4)  # dotlist applied last
    assert "seed" not in cfg.train  # a flag left unset (None) does not touch the config
    assert cfg.data.image_size == 224  # from configs/data.yaml


def test_bad_override_and_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config([], ["--lr", "0.1"])
    with pytest.raises(ConfigError, match="not found: nope.yaml"):
        load_config(["nope.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config([bad])


def test_data_root_env_fallback(monkeypatch):
    cfg = OmegaConf.create({"data": {"data_root": None}})
    monkeypatch.setenv("GEO3D_DATA_ROOT", "/shared/libero")
    assert data_root_from(cfg) == "/shared/libero"
    cfg.data.data_root = "/explicit"
    assert data_root_from(cfg) == "/explicit"


def test_save_resolved_roundtrip(tmp_path):
    cfg = OmegaConf.create({"a": 1, "b": "${a}"})
    path = save_resolved(cfg, tmp_path / "run")
    assert OmegaConf.load(path) == OmegaConf.create({"a": 1, "b": 1})


def test_cli_lists_every_verb():
    out = subprocess.run([sys.executable, "-m", "geo3d.cli", "--help"], capture_output=True, text=True, check=True)
    for verb in ("precompute", "verify-cache", "train", "serve", "eval", "report", "demo", "submit"):
        assert verb in out.stdout


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
