"""An episode's outcome depends only on (checkpoint, task, init state, episode seed, settings): rerunning one
episode alone, in a fresh worker, reproduces what it gave after another episode in the same worker, down to the
simulator's final state (real LIBERO, a real tiny checkpoint with live geometry, in-process policy)."""

from __future__ import annotations

import pytest

from geo3d.core.preemption import PreemptionFlag
from geo3d.evaluation.episode import EpisodeSettings
from geo3d.evaluation.runner import Job, PolicySource, _Worker

from eval_fixtures import SHARED_RUNS, sim_available, trained_runs

pytestmark = [pytest.mark.sim, SHARED_RUNS]
_REASON = sim_available()
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)


def _run(jobs, source, settings):
    worker = _Worker(source, settings, "osmesa", PreemptionFlag(()))
    try:
        return [worker.run(job).to_json() for job in jobs]
    finally:
        worker.close()


def _outcome(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in ("seconds", "video")}


def test_rerunning_one_episode_reproduces_it(tmp_path_factory):
    run_dir = trained_runs(tmp_path_factory.getbasetemp() / "eval_runs")["qformer"]
    source = PolicySource(ckpt=str(run_dir), device="cpu")
    settings = EpisodeSettings(max_steps=12)
    jobs = [Job("libero_spatial", 0, i, seed=7, video_dir=None) for i in (0, 1)]
    together = _run(jobs, source, settings)  # episode 1 after episode 0 in the same env and policy
    alone = _run(jobs[1:], source, settings)  # episode 1 in a fresh worker
    assert [r["seed"] for r in together] == [7000, 7001] and alone[0]["seed"] == 7001
    assert all(r["final_state"] and r["error"] is None for r in together + alone)
    assert _outcome(alone[0]) == _outcome(together[1])
    assert together[0]["final_state"] != together[1]["final_state"]  # the digest tells episodes apart
    other_seed = _run([Job("libero_spatial", 0, 1, seed=8, video_dir=None)], source, settings)[0]
    assert other_seed["seed"] == 8001 and other_seed["final_state"] != alone[0]["final_state"]
