"""The one config system: YAML files merged in order, flags, then dotlist overrides; resolved copy saved."""

from __future__ import annotations


import pytest
from omegaconf import OmegaConf

from geo3d.core.cliutil import build_config
from geo3d.core.config_schema import Schema
from geo3d.core.config import ConfigError, data_root_from, load_config, save_resolved
from helpers import run_geo3d


def test_merge_order_files_flags_overrides(tmp_path):
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text("train: {lr: 1.0e-3, steps: 1, seed: 5}\n")
    a = tmp_path / "a.yaml"
    a.write_text("data: {suite: demo, action_horizon: 8}\ntrain: {lr: 1.0e-4, steps: 10}\n")
    b = tmp_path / "b.yaml"
    b.write_text("train: {steps: 20}\n")
    schema = Schema("test", ["data", str(defaults)])
    cfg = build_config(["data", defaults], [a, b], ["train.lr=3e-4"], {"data.suite": "libero_10", "train.seed": None},
                       schema=schema)
    assert cfg.data.suite == "libero_10"  # explicit flag beats the files
    assert cfg.train.steps == 20  # later file beats earlier
    assert cfg.train.lr == pytest.approx(3e-4)  # dotlist applied last
    assert cfg.train.seed == 5  # a flag left unset (None) does not touch the config
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
    out = run_geo3d(["--help"])
    for verb in ("precompute", "verify-cache", "train", "serve", "eval", "report", "demo", "submit"):
        assert verb in out.stdout
