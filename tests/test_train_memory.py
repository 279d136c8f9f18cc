"""The per-GPU memory estimate (train/memory.py): arithmetic from the real meta-device parameter counts,
ZeRO-2 sharding over GPUs, a frozen VLM, no side effects, and `geo3d train --dry-run` printing the table."""

from __future__ import annotations

import json

import pytest

from geo3d.train.memory import GB, estimate_memory
from geo3d.train.run_config import compose_train_config
from helpers import run_geo3d


@pytest.fixture(scope="module")
def table_3b():
    return estimate_memory(compose_train_config([], [], {"suite": "libero_all"}))


def test_3b_weights_grads_adam_by_precision(table_3b):
    a = table_3b.assumptions
    mods = a["params_by_module"]
    assert mods["vlm"]["bytes_per_param"] == 4 and mods["action_head"]["bytes_per_param"] == 4  # fp32 masters
    stored = sum(m["total"] * m["bytes_per_param"] for m in mods.values())
    rows = {(r.strategy, r.gpus): r for r in table_3b.rows}
    assert set(rows) == {(s, n) for s in ("ddp", "zero2") for n in (1, 4, 8)}
    assert rows["ddp", 1].weights_gb == pytest.approx(stored / GB)
    assert rows["ddp", 1].optimizer_gb == pytest.approx(2 * rows["ddp", 1].grads_gb)  # two Adam moments
    assert rows["ddp", 8].grads_gb == pytest.approx(2 * rows["ddp", 1].grads_gb)  # + DDP gradient buckets
    t = a["params_trainable"]
    for n in (1, 4, 8):  # ZeRO-2: bf16 weights replicated, grads + fp32 master/moments partitioned
        assert rows["zero2", n].weights_gb == pytest.approx(2 * a["params_total"] / GB)
        assert rows["zero2", n].optimizer_gb == pytest.approx(12 * t / n / GB)
        assert rows["zero2", n].grads_gb == pytest.approx(2 * t / n / GB)
    assert rows["zero2", 8].total_gb < rows["zero2", 1].total_gb
    assert a["vlm_seq"] == 2 * 64 + 48 and a["vision_patches"] == 2 * 256  # two 224^2 views
    assert 1 < rows["ddp", 1].activations_gb < 40


def test_frozen_vlm_stores_fewer_activations_and_no_vlm_optimizer_state(table_3b):
    frozen = estimate_memory(compose_train_config([], ["train.freeze=[vlm]"], {"suite": "libero_all"}))
    assert frozen.assumptions["params_trainable"] < table_3b.assumptions["params_trainable"]
    assert frozen.rows[0].activations_gb < table_3b.rows[0].activations_gb
    assert frozen.rows[0].optimizer_gb < table_3b.rows[0].optimizer_gb
    assert frozen.assumptions["params_by_module"]["vlm"]["bytes_per_param"] == 2  # a frozen VLM stays bf16


def test_estimate_has_no_side_effects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    estimate_memory(compose_train_config([], [], {"suite": "demo"}))
    assert list(tmp_path.iterdir()) == []


def test_dry_run_prints_the_memory_table():
    r = run_geo3d(["train", "--suite", "libero_all", "--compressor", "pool", "--dry-run"])
    assert r.returncode == 0, r.stderr[-2000:]
    memory = json.loads(r.stdout)["memory"]
    assert len(memory["rows"]) == 6 and memory["rows"][0]["total_gb"] > 20
    assert "per-GPU training memory (estimate)" in r.stderr and "zero2" in r.stderr and "GiB per GPU" in r.stderr
