"""`geo3d train` as users run it: bad input (and a DeepSpeed launch) fails with a clear message before any
training step, train.save_final=false writes no checkpoint, --dry-run prints parameter counts, and the training
process never imports the geometry encoder."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from geo3d.core.config import PACKAGE_ROOT
from geo3d.policy.run_dir import read_metrics
from helpers import spawn_geo3d
from train_fixtures import make_train_data, train_args

pytestmark = pytest.mark.slow  # real geo3d train subprocesses


@pytest.fixture(scope="module")
def data_store(tmp_path_factory):
    return make_train_data(tmp_path_factory.mktemp("cli"))


def _refused(r: subprocess.CompletedProcess, out, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr, r.stderr[-2000:]
    for n in needles:
        assert n in r.stderr, r.stderr
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()  # no step was taken


def test_store_from_another_suite_is_refused_saying_what_differs(data_store, tmp_path):
    data, store = data_store
    out = tmp_path / "run"
    args = train_args(data, store, out)
    args[args.index("libero_spatial")] = "libero_object"
    _refused(spawn_geo3d(args, expect=None), out, "this store holds libero_spatial; the run asks for libero_object",
             "--suite libero_spatial")


def test_token_shape_mismatch_unknown_compressor_and_missing_store_are_refused(data_store, tmp_path):
    data, store = data_store
    out = tmp_path / "run"
    shape = [a for a in train_args(data, store, out) if not a.startswith("model.geometry.tokens_per_view")]
    _refused(spawn_geo3d(shape, expect=None), out, "[2, 196, 32]", "model.geometry")
    _refused(spawn_geo3d(train_args(data, store, out, "transformer"), expect=None), out, "unknown model.compressor.type 'transformer'",
             "qformer")
    _refused(spawn_geo3d(train_args(data, tmp_path / "nope.zarr", out), expect=None), out, "features store not found",
             "geo3d precompute")
    _refused(spawn_geo3d(train_args(data, None, out, "pool"), expect=None), out, "needs cached geometry tokens", "--store")


def test_deepspeed_is_refused_with_what_to_use_instead(data_store, tmp_path):
    """`accelerate launch` with a DeepSpeed config sets ACCELERATE_USE_DEEPSPEED: never run, so refused."""
    data, store = data_store
    out = tmp_path / "run"
    r = spawn_geo3d(train_args(data, store, out), env={"ACCELERATE_USE_DEEPSPEED": "true"}, expect=None)
    _refused(r, out, "DeepSpeed is not supported yet", "configs/accelerate/single_gpu.yaml", "train.freeze=[vlm]")


def test_save_final_false_trains_without_writing_a_checkpoint(data_store, tmp_path):
    data, store = data_store
    out = tmp_path / "run"
    r = spawn_geo3d(train_args(data, store, out, "qformer", 3, "train.save_final=false"), expect=None)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [rec["step"] for rec in read_metrics(out)] == [1, 2, 3]
    assert not any((out / "checkpoints").glob("steps_*")) and "checkpoint None" in r.stdout


def test_dry_run_prints_parameter_counts_per_module_as_json():
    r = spawn_geo3d(["train", "--config", "configs/train/ablation_per_layer.yaml", "--dry-run"], expect=None)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout)
    params = report["params"]
    assert report["compressor"] == "per_layer" and report["model_config"] == "qwen2_5_vl_3b"
    assert set(params) == {"vlm", "compressor", "action_head", "total"}
    assert round(params["compressor"]["total"] / 1e6, 2) == 50.36  # the seed's per_layer size
    frozen_state_encoder = 7 * 1024 + 1024 + 1024 * 2048 + 2048  # preset fork: built, never fed (no state)
    assert params["total"]["trainable"] == params["total"]["total"] - frozen_state_encoder
    r = spawn_geo3d(["train", "--suite", "demo", "--compressor", "qformer", "--dry-run", "train.freeze=[vlm]"], expect=None)
    counts = json.loads(r.stdout)["params"]
    assert counts["vlm"]["trainable"] == 0 and counts["compressor"]["trainable"] > 0


PROBE = """
import json, sys
from geo3d.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print("MODULES=" + json.dumps({"code": code, "modules": sorted(m for m in sys.modules
      if m.startswith("geo3d.precompute") or "mapanything" in m)}))
"""


def test_training_never_imports_the_geometry_encoder(data_store, tmp_path):
    data, store = data_store
    args = train_args(data, store, tmp_path / "run", "qformer", 3)
    r = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=PACKAGE_ROOT, capture_output=True, text=True,
                       timeout=600)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("MODULES=")][-1]
    probe = json.loads(line[len("MODULES="):])
    assert probe["code"] in (0, None), r.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoints" / "steps_3").is_dir()  # it really trained
    # the CLI builds only the invoked verb: nothing of stage 1 is loaded, not even its verb module
    assert probe["modules"] == [], probe["modules"]
