"""`geo3d train` and encoder taps (issue 23): a run reads either tap's store unchanged, records which tap it
trained on, refuses a store of another tap than the one it asks for, and never resumes on other tokens."""

from __future__ import annotations

import json

import pytest

from geo3d.data.mixture import LiberoMixture
from helpers import spawn_geo3d
from train_fixtures import DIM, ENCODER, IMAGE, TOKENS, make_matching_store, make_train_data, train_args

pytestmark = pytest.mark.slow  # real geo3d train subprocesses


@pytest.fixture(scope="module")
def data_stores(tmp_path_factory):
    """(data root, the info_sharing store, an `encoder` store of the same frames named as precompute names it)."""
    root = tmp_path_factory.mktemp("taps")
    data, store = make_train_data(root)
    mixture = LiberoMixture("libero_spatial", data, image_size=IMAGE)
    enc_store = make_matching_store(mixture, root / "store@encoder", views=2, tokens=TOKENS, dim=DIM, shard_frames=8,
                                    seed=1, encoder={**ENCODER, "tap": "encoder"})
    return data, store, enc_store


def _error(r) -> str:
    assert r.returncode == 2 and "Traceback" not in r.stderr, (r.returncode, r.stderr[-2000:])
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("error: ")]
    return line


def test_a_run_records_its_tap_and_refuses_a_store_of_another(data_stores, tmp_path):
    data, store, enc_store = data_stores
    line = _error(spawn_geo3d(train_args(data, store, tmp_path / "refused", "qformer", 2, "--tap", "encoder"), expect=None))
    assert "holds 'info_sharing' tokens" in line and "asks for 'encoder'" in line
    assert f"--store {enc_store}" in line  # the sibling store of the same pass, by the naming rule
    assert not (tmp_path / "refused" / "metrics.jsonl").exists()
    out = tmp_path / "enc"
    r = spawn_geo3d(train_args(data, enc_store, out, "qformer", 2), expect=None)  # no --tap: whatever the store holds, recorded
    assert r.returncode == 0, r.stderr[-2000:]
    marker = json.loads((out / "checkpoints" / "steps_2" / "checkpoint.json").read_text())
    assert marker["tap"] == "encoder" and marker["store"]["tap"] == "encoder"
    assert marker["store"]["encoder"]["tap"] == "encoder"
    assert json.loads((out / "provenance.json").read_text())[-1]["store"]["tap"] == "encoder"
    # resuming on the other tap's store (train.store may move on --resume) is refused: other tokens
    r = spawn_geo3d(train_args(data, store, out, "qformer", 3, "--resume"), expect=None)
    assert "--resume: the store's tokens differ" in _error(r)
    assert 'tap: checkpoint has "encoder", store has "info_sharing"' in r.stderr
    assert not (out / "checkpoints" / "steps_3").exists()


def test_none_has_no_tap(data_stores, tmp_path):
    data, store, _ = data_stores
    line = _error(spawn_geo3d(train_args(data, None, tmp_path / "none", "none", 2, "--tap", "encoder"), expect=None))
    assert "compressor 'none' reads no geometry tokens" in line
