"""Evaluation logic that needs no simulator: the stop flag (every preemption signal of geo3d.preemption,
SIGTERM and SIGUSR1, asks the episode loop to stop; each evaluation starts with it cleared and restores the
handlers) and the --resume check that keeps episodes of other settings out of one success rate."""

from __future__ import annotations

import json
import os
import signal

import pytest

from evaluation.runner import STOP, install_stop_handlers, restore_handlers, stopped_by


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signals_set_the_stop_flag_and_handlers_are_restored(sig):
    before = signal.getsignal(sig)
    previous = install_stop_handlers()
    try:
        assert not STOP.is_set()
        os.kill(os.getpid(), sig)
        assert STOP.is_set() and stopped_by() == signal.Signals(sig).name
    finally:
        restore_handlers(previous)
    assert signal.getsignal(sig) is before
    restore_handlers(install_stop_handlers())  # the next evaluation does not inherit the old stop request
    assert not STOP.is_set()


def test_resume_refuses_results_of_other_settings_or_another_checkpoint(tmp_path):
    """Episodes of another step cap (or checkpoint) must not be mixed into one success rate by --resume."""
    from omegaconf import OmegaConf

    from evaluation.evaluate import RESULTS_FILE, check_resume_matches
    from geo3d.config import save_resolved
    from geo3d.errors import Geo3dError

    cfg = OmegaConf.create({"eval": {"suite": "libero_spatial", "max_steps": 10, "settle_steps": 10, "replan_steps": 8,
                                     "gripper": {"sim_sign": 1.0, "binarize": True}, "render_size": 256, "seed": 7,
                                     "workers": 1, "video": False}})
    save_resolved(cfg, tmp_path)
    from geo3d.data.orientation import orientation_probe
    (tmp_path / RESULTS_FILE).write_text(json.dumps({"checkpoint": "/runs/a/checkpoints/steps_2",
                                                     "image_orientation": orientation_probe()}))
    check_resume_matches(tmp_path, cfg, "/runs/a/checkpoints/steps_2")
    check_resume_matches(tmp_path, OmegaConf.merge(cfg, {"eval": {"workers": 4, "video": True}}),
                         "/runs/a/checkpoints/steps_2")  # how episodes run may change, not what they measure
    with pytest.raises(Geo3dError, match="eval.max_steps: results have 10, now 20"):
        check_resume_matches(tmp_path, OmegaConf.merge(cfg, {"eval": {"max_steps": 20}}), None)
    with pytest.raises(Geo3dError, match="eval.gripper"):
        check_resume_matches(tmp_path, OmegaConf.merge(cfg, {"eval": {"gripper": {"sim_sign": -1.0}}}), None)
    with pytest.raises(Geo3dError, match="checkpoint: results have .*steps_2, now .*steps_4"):
        check_resume_matches(tmp_path, cfg, "/runs/a/checkpoints/steps_4")
