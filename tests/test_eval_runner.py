"""Evaluation logic that needs no simulator: the stop flag (every preemption signal of geo3d.core.preemption,
SIGTERM and SIGUSR1, asks the episode loop to stop; each evaluation starts with it cleared and restores the
handlers) and the --resume check that keeps episodes of other settings out of one success rate."""

from __future__ import annotations

import json
import os
import signal

import pytest
from omegaconf import OmegaConf

from geo3d.core.config import save_resolved
from geo3d.core.errors import Geo3dError
from geo3d.core.preemption import PreemptionFlag
from geo3d.data.orientation import orientation_probe
from geo3d.evaluation.episode import EpisodeInterrupted, EpisodeSettings
from geo3d.evaluation.evaluate import RESULTS_FILE, check_resume_matches
from geo3d.evaluation.runner import Job, PolicySource, run_jobs


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signals_set_the_stop_flag_and_handlers_are_restored(sig):
    """Eval uses geo3d.core.preemption's flag like precompute and train (no module-level stop state of its own)."""
    before = signal.getsignal(sig)
    stop = PreemptionFlag().install()
    try:
        assert not stop.requested
        os.kill(os.getpid(), sig)
        assert stop.requested and stop.signal_name == signal.Signals(sig).name
    finally:
        stop.restore()
    assert signal.getsignal(sig) is before
    fresh = PreemptionFlag().install()
    assert not fresh.requested  # the next evaluation does not inherit the old stop request
    fresh.restore()


def test_run_jobs_stops_when_the_flag_is_set():
    """A requested stop ends run_jobs before the next episode (no simulator is started)."""
    stop = PreemptionFlag()
    stop.signal_name = "SIGTERM"
    jobs = [Job("libero_spatial", 0, i, 0, None) for i in range(3)]
    with pytest.raises(EpisodeInterrupted):
        list(run_jobs(jobs, PolicySource(server="ws://127.0.0.1:1"), EpisodeSettings(max_steps=1), "egl", 2, stop))


def test_resume_refuses_results_of_other_settings_or_another_checkpoint(tmp_path):
    """Episodes of another step cap (or checkpoint) must not be mixed into one success rate by --resume."""
    cfg = OmegaConf.create({"eval": {"suite": "libero_spatial", "max_steps": 10, "settle_steps": 10, "replan_steps": 8,
                                     "gripper": {"sim_sign": 1.0, "binarize": True}, "render_size": 256, "seed": 7,
                                     "workers": 1, "video": False}})
    save_resolved(cfg, tmp_path)
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
