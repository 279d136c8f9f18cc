"""`geo3d train` end to end in real subprocesses on a synthetic dataset + matching store: every compressor
trains and its loss falls, checkpoints load for predict_action, the run directory has its records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from geo3d.data.mixture import LiberoMixture
from geo3d.data.norm_stats import load_norm_stats
from geo3d.features_store import FeatureReader
from geo3d.policy.pretrained import Policy
from geo3d.policy.run_dir import read_metrics, window_means

from helpers import spawn_geo3d
from train_fixtures import make_train_data, train_args

pytestmark = pytest.mark.slow  # real geo3d train subprocesses


COMPRESSORS = ("none", "mean", "pool", "per_layer", "qformer")
STEPS = 60


@pytest.fixture(scope="module")
def data_store(tmp_path_factory):
    # one episode of 8 frames and batch 8: every step sees the same 8 frames (a fixed small batch to fit)
    return make_train_data(tmp_path_factory.mktemp("e2e"), episodes=1, length=8)


@pytest.mark.parametrize("compressor", COMPRESSORS)
def test_each_compressor_trains_loss_falls_and_checkpoint_predicts(data_store, tmp_path, compressor):
    data, store = data_store
    out = tmp_path / "run"
    r = spawn_geo3d(train_args(data, None if compressor == "none" else store, out, compressor, STEPS,
                             "train.per_device_batch_size=8", "train.save_interval=30"), expect=None)
    assert r.returncode == 0, r.stderr[-3000:]
    records = read_metrics(out)
    assert [rec["step"] for rec in records] == list(range(1, STEPS + 1))
    first, last = window_means([rec["loss"] for rec in records], 0.1)
    assert last < 0.8 * first, (compressor, first, last)
    rec = records[-1]
    assert set(rec["lr"]) == ({"vlm", "action_head"} | ({"compressor"} if compressor != "none" else set()))
    if compressor == "none":  # no compressor module at all
        assert "compressor" not in rec["grad_norm"]
    else:
        assert rec["grad_norm"]["compressor"] > 0  # gradient reaches the compressor (the seed's diagnostic)
    assert len(rec["geom_attention_mass"]) == 4  # one value per DiT layer of the tiny head
    if compressor == "none":
        assert all(m == 0 for m in rec["geom_attention_mass"])
    else:
        assert all(0 < m < 1 for m in rec["geom_attention_mass"])
    assert rec["time_data_s"] >= 0 and rec["time_compute_s"] > 0

    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["steps_30", "steps_60"]
    ckpt = out / "checkpoints" / "steps_60"
    names = {p.name for p in ckpt.iterdir()}
    assert {"model.safetensors", "config.yaml", "vlm", "processor", "processor.json", "norm_stats.json",
            "checkpoint.json", "resume"} <= names
    assert "steps_60_pytorch_model.pt" not in names  # the seed's file only behind train.checkpoint.starvla_pt
    assert not [p for p in (ckpt / "resume").rglob("*") if p.name.startswith("model")]  # no second weights copy
    assert yaml.safe_load((ckpt / "config.yaml").read_text())["model"]["compressor"]["type"] == compressor
    for name in ("resolved_config.yaml", "norm_stats.json", "provenance.json"):
        assert (out / name).is_file()
    assert json.loads((out / "provenance.json").read_text())[0]["tool"] == "geo3d"

    _predict_from_checkpoint_dir(ckpt, data, store, compressor)


def _predict_from_checkpoint_dir(ckpt, data, store, compressor):
    """Only the checkpoint dir (+ the frame's geometry tokens) is needed to act."""
    policy = Policy.from_pretrained(ckpt)
    assert policy.step == 60 and policy.compressor == compressor
    sample = LiberoMixture("libero_spatial", data, image_size=64)[2]
    geometry = None if compressor == "none" else FeatureReader(store)[2]
    actions = policy.predict_action(sample["images"], sample["instruction"], sample["state"], geometry=geometry)
    assert actions.shape == (8, 7) and actions.dtype == np.float32 and np.isfinite(actions).all()
    stats = load_norm_stats(ckpt / "norm_stats.json")["action"]
    lo, hi = np.asarray(stats["min"][:6]), np.asarray(stats["max"][:6])
    span = hi - lo
    assert ((actions[:, :6] >= lo - span) & (actions[:, :6] <= hi + span)).all()  # unnormalized: dataset units
    if compressor != "none":
        with pytest.raises(Exception, match="needs geometry tokens"):
            policy.predict_action(sample["images"], sample["instruction"], sample["state"])
