"""Upright LeRobot frames reach the models unturned, raw renders are turned once, and every artifact made with
the old image path (stored frames turned 180 degrees: probe "rot180") is refused with what to recompute."""

from __future__ import annotations

import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from geo3d.core.errors import Geo3dError, StoreError
from geo3d.data.mixture import LiberoMixture
from geo3d.data.orientation import orientation_probe
from geo3d.evaluation.evaluate import RESULTS_FILE, check_resume_matches
from geo3d.evaluation.observation import observation_to_inputs, upright_frame
from geo3d.features_store import FeatureReader
from geo3d.policy.pretrained import FORMAT, read_marker
from geo3d.policy.run_dir import MARKER
from geo3d.precompute.run import _refuse_old_orientation
from geo3d.train.preflight import open_checked_store

OLD_PROBE = {"orientation": "rot180", "sha256": "0123456789abcdef", "stored_size": "256"}  # as old stores hold it


def test_the_probe_measures_todays_convention():
    assert orientation_probe() == {"orientation": "identity", "raw_render": "rot180"}


def test_a_store_made_with_the_old_orientation_is_refused_by_train_and_precompute(tmp_path):
    from data_fixtures import make_synthetic_libero
    from train_fixtures import make_matching_store

    make_synthetic_libero(tmp_path / "data", suites=("libero_spatial",), episodes_per_suite=1, length=4)
    mix = LiberoMixture("libero_spatial", tmp_path / "data", image_size=28)
    old = make_matching_store(mix, tmp_path / "old", 2, 4, 8, preprocessing={"image_path_probe": OLD_PROBE})
    new = make_matching_store(mix, tmp_path / "new", 2, 4, 8)
    cfg = OmegaConf.create({"model": {"geometry": {"views": 2, "tokens_per_view": 4, "dim": 8}},
                            "train": {"store_check_frames": 4}})
    with pytest.raises(StoreError, match=r"old image orientation.*upside-down.*precompute --store .*old --overwrite"):
        open_checked_store(cfg, str(old), mix)
    with pytest.raises(StoreError, match="old image orientation"):
        _refuse_old_orientation(old, overwrite=False)
    _refuse_old_orientation(old, overwrite=True)  # --overwrite recomputes it: allowed
    assert len(open_checked_store(cfg, str(new), mix)) == len(FeatureReader(new))
    _refuse_old_orientation(new, overwrite=False)


def test_old_checkpoints_are_refused(tmp_path):
    for name, marker in (("made_before_the_record", {"format": FORMAT, "step": 2, "store": None}),
                         ("old_probe", {"format": FORMAT, "step": 2, "image_orientation": {"orientation": "rot180"}})):
        (tmp_path / name).mkdir()
        (tmp_path / name / MARKER).write_text(json.dumps(marker))
        with pytest.raises(Geo3dError, match=r"checkpoint .*old image orientation.*Retrain"):
            read_marker(tmp_path / name)
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / MARKER).write_text(json.dumps({"format": FORMAT, "step": 2,
                                                       "image_orientation": orientation_probe()}))
    assert read_marker(tmp_path / "new")["step"] == 2


def test_eval_resume_refuses_results_of_the_old_orientation(tmp_path):
    cfg = OmegaConf.create({"eval": {"suite": "libero_spatial"}})
    (tmp_path / RESULTS_FILE).write_text(json.dumps({"checkpoint": "/r/checkpoints/steps_2"}))
    with pytest.raises(Geo3dError, match=r"evaluation in .*old image orientation.*--overwrite"):
        check_resume_matches(tmp_path, cfg, "/r/checkpoints/steps_2")


def test_eval_turns_raw_renders_once_and_training_leaves_stored_frames():
    raw = np.zeros((16, 16, 3), np.uint8)
    raw[-1, -1] = 255  # robosuite's render is upside down: this pixel is the scene's top-left
    obs = {"agentview_image": raw, "robot0_eye_in_hand_image": raw.copy(), "robot0_eef_pos": np.zeros(3),
           "robot0_eef_quat": np.array([0, 0, 0, 1.0]), "robot0_gripper_qpos": np.zeros(2)}
    images, _ = observation_to_inputs(obs, None)
    assert images[0, 0, 0, 0] == 255 and images[1, 0, 0, 0] == 255 and images[0, -1, -1, 0] == 0
    assert upright_frame(obs)[0, 0, 0] == 255 and upright_frame(obs).shape == (16, 32, 3)
