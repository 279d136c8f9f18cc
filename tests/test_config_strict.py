"""Strict configuration (issue 22 item 5, issue 25 rows 3, 10, 12): every verb refuses a key its config does not
define (naming the nearest valid one), a value of the wrong type and one out of range, with one `error:` line,
exit 2, before anything is read or written. In-process (typer's CliRunner): no subprocess."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from geo3d.cli.doctor.run import compose
from geo3d.cli.submit import config_schema as submit_schema
from geo3d.core.config import CONFIG_DIR
from geo3d.evaluation.cli import config_schema as eval_schema
from geo3d.features_store.spec import StoreLayout
from geo3d.policy.configuration_policy import PolicyConfig
from geo3d.precompute.cli import config_schema as precompute_schema
from geo3d.train.run_config import compose_train_config
from geo3d.train.run_config import config_schema as train_schema

from helpers import run_geo3d


def geo3d(*args: str) -> tuple[int, str]:
    """`geo3d ARGS` in this process: (exit code, stderr)."""
    r = run_geo3d(args, expect=None)
    return r.returncode, r.stderr


def refused(code: int, err: str, *needles: str) -> None:
    assert code == 2, (code, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)


def test_train_typo_exits_2_naming_the_nearest_key(tmp_path):
    out = tmp_path / "run"
    code, err = geo3d("train", "--suite", "demo", "--compressor", "none", "--out", str(out), "train.max_step=10")
    refused(code, err, "unknown config key 'train.max_step'", "did you mean train.max_steps?")
    assert not out.exists()
    code, err = geo3d("train", "--suite", "demo", "--out", str(out), "model.vlm.sorce=x")
    refused(code, err, "did you mean model.vlm.source?")


def test_precompute_unknown_key_exits_2_and_writes_nothing(tmp_path):
    store = tmp_path / "store.zarr"
    code, err = geo3d("precompute", "--suite", "demo", "--store", str(store), "precompute.bogus_key=3")
    refused(code, err, "unknown config key 'precompute.bogus_key'", "geo3d precompute")
    code, err = geo3d("precompute", "--suite", "demo", "--store", str(store), "precompute.batch_sze=8")
    refused(code, err, "did you mean precompute.batch_size?")
    assert not store.exists()


def test_a_key_of_another_verb_is_refused_saying_what_this_verb_reads(tmp_path):
    code, err = geo3d("train", "--suite", "demo", "--out", str(tmp_path / "run"), "precompute.batch_size=3")
    refused(code, err, "'precompute.batch_size'", "`geo3d train` reads", "train.*", "model.*")


@pytest.mark.parametrize("override, message", [
    ("train.max_steps=abc", "train.max_steps must be an integer, got 'abc'"),
    ("train.lr.vlm=abc", "train.lr.vlm must be a number, got 'abc'"),
    ("train.lr.base=-1", "train.lr.base must be >= 0, got -1"),  # row 12: was trained on
    ("train.mixed_precision=bf32", "train.mixed_precision must be one of ['auto', 'no', 'bf16', 'fp16']"),
    ("train.keep_last=0", "train.keep_last must be >= 1, got 0"),
    ("train=5", "train is a section (train.*), not a value, got 5"),
    ("train.pin_memory=maybe", "train.pin_memory must be true or false or one of ['auto']"),
])
def test_train_types_and_ranges_are_checked_before_anything_starts(tmp_path, override, message):
    out = tmp_path / "run"
    code, err = geo3d("train", "--suite", "demo", "--compressor", "none", "--out", str(out), override)
    refused(code, err, message)
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["precompute.batch_size=abc"], "precompute.batch_size must be an integer, got 'abc'"),
    (["precompute.decode_workers=-1"], "precompute.decode_workers must be >= 0, got -1"),
    (["encoder.name=dinov2"], "encoder.name must be one of ['tiny', 'mapanything'], got 'dinov2'"),
    (["store.shard_frames=many"], "store.shard_frames must be an integer, got 'many'"),
    (["--num-shards", "0"], "--num-shards must be >= 1, got 0"),  # row 10
    (["--shard", "0", "--num-shards", "0"], "--num-shards must be >= 1, got 0"),
    (["--shard", "-1", "--num-shards", "2"], "--shard must be >= 0, got -1"),
    (["--limit-frames", "0"], "--limit-frames must be >= 1, got 0"),
])
def test_precompute_types_and_ranges_are_checked_before_anything_starts(tmp_path, args, message):
    store = tmp_path / "store.zarr"
    code, err = geo3d("precompute", "--suite", "demo", "--store", str(store), *args)
    refused(code, err, message)
    assert not store.exists()


@pytest.mark.parametrize("args, message", [
    (["eval", "--ckpt", "x", "eval.wokers=2"], "did you mean eval.workers?"),
    (["eval", "--ckpt", "x", "eval.workers=0"], "eval.workers must be >= 1, got 0"),
    (["serve", "--ckpt", "x", "serve.port=70000"], "serve.port must be <= 65535, got 70000"),
    (["serve", "--ckpt", "x", "serve.limits.max_frame_mb=0"], "serve.limits.max_frame_mb must be > 0, got 0"),
    (["serve", "--ckpt", "x", "serve.limits.max_frame_mb=-1.5"], "serve.limits.max_frame_mb must be > 0, got -1.5"),
    (["report", "x", "--config", "{cfg}"], "unknown config key 'report.outt'"),
    (["submit", "verify", "--store", "s", "--dry-run", "slurm.partiton=gpu"], "did you mean slurm.partition?"),
    (["submit", "train", "--compressor", "pool", "--out", "o", "--store", "s", "--dry-run", "train.max_step=3"],
     "did you mean train.max_steps?"),  # forwarded to the job's geo3d train: checked now, not on the node
    (["doctor", "--suite", "demo", "trian.max_steps=3"], "did you mean train.max_steps?"),
    (["inspect", "--suite", "demo", "--frame", "0", "--out", "o", "eval.render_sise=1"],
     "did you mean eval.render_size?"),
])
def test_every_verb_with_a_config_refuses_bad_keys(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "report.yaml").write_text("report: {outt: x}\n")
    args = [a.replace("{cfg}", str(tmp_path / "report.yaml")) for a in args]
    code, err = geo3d(*args)
    refused(code, err, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.yaml"]  # nothing written


def test_doctor_composes_every_verb_from_one_command_line():
    """doctor's overrides span precompute, train and submit: each keeps its own keys, none is refused."""
    plan = compose(None, ["precompute.batch_size=4", "train.max_steps=3", "slurm.partition=gpu"], {"suite": "demo"},
                   "all", None, False, False)
    got = (plan.pre_cfg.precompute.batch_size, plan.train_cfg.train.max_steps, plan.slurm_cfg.partition)
    assert got == (4, 3, "gpu")
    assert "train" not in plan.pre_cfg and "precompute" not in plan.train_cfg


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONFIG_DIR / "train").glob("*.yaml")))
def test_every_shipped_train_config_composes_under_the_schema(name):
    compose_train_config([Path(f"train/{name}")], [], {"suite": "demo"})


def test_yaml_defaults_with_null_have_a_declared_type():
    """A null default says nothing about its type: each one has a rule, so every key's type is checked."""
    for schema in (precompute_schema(), train_schema(), eval_schema(), submit_schema()):
        yaml_keys = {k: v for k, v in schema.leaves.items() if k.split(".")[0] not in schema.sections}
        untyped = [k for k, v in yaml_keys.items() if schema.rule(k) is None]
        assert not untyped, (schema.verb, untyped)


def test_model_and_store_defaults_come_from_their_classes_once():
    """One source per section: configs/store.yaml and configs/model/*.yaml hold only what differs."""
    assert OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "store.yaml")) == {"store": {}}
    model_defaults = dataclasses.asdict(PolicyConfig())
    for path in (CONFIG_DIR / "model").glob("*.yaml"):
        for key, value in _leaves(OmegaConf.to_container(OmegaConf.load(path))["model"]):
            assert value != _get(model_defaults, key), f"{path.name}: model.{key} repeats the class default"
    assert precompute_schema().sections["store"] == dataclasses.asdict(StoreLayout())


def _leaves(tree: dict, prefix: str = ""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _get(tree: dict, key: str):
    for part in key.split("."):
        tree = tree[part]
    return tree
