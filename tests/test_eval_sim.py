"""`geo3d eval` in the real LIBERO simulator (hf-libero, mujoco 3.8.1, OSMesa on CPU): gripper sign, image
path identical to training's, a real episode from a demo-trained checkpoint (in-process and via `serve`)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import av
import numpy as np
import pytest
from omegaconf import OmegaConf

from geo3d.core import sim
from geo3d.core.config import CONFIG_DIR, PACKAGE_ROOT
from geo3d.core.preemption import PREEMPTED_EXIT_CODE
from geo3d.core.sim import raw_frames, state_from_obs
from geo3d.data.episode_arrays import EpisodeArrays
from geo3d.data.lerobot_writer import write_lerobot_dataset
from geo3d.data.mixture import LiberoMixture
from geo3d.data.suites import DEMO_DATA_ROOT, SUITE_FOLDERS
from geo3d.data.transforms import RAW_RENDER, to_model_images
from geo3d.evaluation.episode import EpisodeSettings, to_sim_action
from geo3d.evaluation.observation import observation_to_inputs

from eval_fixtures import ENV, IMAGE, SHARED_RUNS, ServeProcess, evaluated_run, geo3d, run, sim_available, trained_runs

pytestmark = [pytest.mark.sim, SHARED_RUNS]


@pytest.fixture(scope="module", autouse=True)
def _simulator() -> None:
    """Skip the module where the LIBERO simulator does not import (probed once, when a test here runs)."""
    reason = sim_available()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def sim_trace():
    """Observations of libero_spatial task 0 (init state 0): after settling, after 15 dataset-convention
    'close' commands, after 15 'open' commands."""
    sim.configure("osmesa")
    gripper = OmegaConf.load(CONFIG_DIR / "eval.yaml").eval.gripper
    settings = EpisodeSettings(max_steps=1, gripper_sign=float(gripper.sim_sign), binarize_gripper=gripper.binarize)
    task = sim.get_task("libero_spatial", 0)
    env = sim.make_env(task, image_size=256)
    try:
        trace = {"settled": sim.reset_to(env, sim.init_states(task)[0], settle_steps=10)}
        for name, g in (("closed", 1.0), ("opened", -1.0)):  # dataset convention: +1 close, -1 open
            for _ in range(15):
                obs, _, _, _ = env.step(to_sim_action(np.array([0, 0, 0, 0, 0, 0, g]), settings))
            trace[name] = obs
    finally:
        env.close()
    return trace


def _finger_gap(obs) -> float:
    q = obs["robot0_gripper_qpos"]
    return float(q[0] - q[1])


def test_gripper_dataset_convention_reaches_the_sim_with_the_configured_sign(sim_trace):
    settled, closed, opened = (_finger_gap(sim_trace[k]) for k in ("settled", "closed", "opened"))
    assert closed < 0.5 * settled, (settled, closed)   # +1 (dataset: close) closed the fingers
    assert opened > 2 * closed and opened > 0.06, (closed, opened)  # -1 (dataset: open) opened them


def test_eval_images_are_upright(sim_trace):
    """The raw render turned once (as IPEC/openvla store LIBERO frames): scene upright, wall at the top."""
    agent = observation_to_inputs(sim_trace["settled"], None)[0][0].astype(np.float32)
    fifth = agent.shape[0] // 5
    saturation = lambda x: float((x.max(-1) - x.min(-1)).mean())  # noqa: E731
    assert saturation(agent[:fifth]) < 0.5 * saturation(agent[-fifth:])  # gray wall above, wooden table below


def test_eval_images_are_the_training_images(sim_trace, tmp_path):
    """Frames stored like the demo generator stores them, read back by the training data layer, equal (up to
    video compression) what the eval path gives the policy for the same observation; a rotated frame does not."""
    obs_list = [sim_trace[k] for k in ("settled", "closed", "opened")]
    stored = [to_model_images(raw_frames(o), None, RAW_RENDER) for o in obs_list]  # as the demo generator stores
    episode = EpisodeArrays(task="pick up the black bowl", agentview=np.stack([s[0] for s in stored]),
                            wrist=np.stack([s[1] for s in stored]),
                            state=np.stack([state_from_obs(o) for o in obs_list]),
                            action=np.zeros((len(obs_list), 7), np.float32))
    write_lerobot_dataset(tmp_path / SUITE_FOLDERS["libero_spatial"], [episode])
    mixture = LiberoMixture("libero_spatial", tmp_path, image_size=IMAGE)
    for i, obs in enumerate(obs_list):
        train_item = mixture[i]
        images, state = observation_to_inputs(obs, IMAGE)
        assert images.shape == train_item["images"].shape == (2, IMAGE, IMAGE, 3) and images.dtype == np.uint8
        diff = np.abs(images.astype(int) - train_item["images"].astype(int)).mean()
        rotated = np.abs(images[:, ::-1, ::-1].astype(int) - train_item["images"].astype(int)).mean()
        assert diff < 6 and rotated > 3 * diff, (diff, rotated)
        np.testing.assert_allclose(state, train_item["state"], rtol=0, atol=1e-6)


def test_a_bundled_init_state_renders_like_the_stored_demo_frame(sim_trace):
    """Real pixels: libero_spatial task 0 from bundled init state 0 (settled like the generator did), mapped the
    way eval maps it, equals the stored demo frame 0 of that episode through the training path up to AV1 noise,
    and is far from its 180-degree turn: this cannot pass if either path is upside down."""
    gen = json.loads((DEMO_DATA_ROOT / "generation.json").read_text())
    (ep,) = [m for m in gen["episodes"] if (m["suite"], m["task_id"], m["init_state_id"]) == ("libero_spatial", 0, 0)]
    mixture = LiberoMixture("demo", image_size=IMAGE)
    assert mixture.paths[0].name.startswith("libero_spatial")
    train_images = mixture[mixture.global_index(0, ep["episode_index"], 0)]["images"].astype(int)
    eval_images = observation_to_inputs(sim_trace["settled"], IMAGE)[0].astype(int)
    for v in range(2):  # agentview, wrist
        diff = np.abs(eval_images[v] - train_images[v]).mean()
        turned = np.abs(eval_images[v][::-1, ::-1] - train_images[v]).mean()
        print(f"view {v}: |eval - stored| {diff:.2f}, |eval turned - stored| {turned:.2f}")
        assert diff < 4 and turned > 5 * diff, (v, diff, turned)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    return evaluated_run(tmp_path_factory.getbasetemp() / "eval_runs")


def test_eval_runs_a_real_episode_in_process(evaluated):
    run_dir, res = evaluated
    assert res["suite"] == "libero_spatial" and res["complete"] and res["step"] == 2
    assert res["summary"]["episodes"] == 1 and res["summary"]["success_rate"] in (0.0, 1.0)
    (task,) = res["tasks"]
    assert task["task_id"] == 0 and "black bowl" in task["instruction"] and task["episodes"] == 1
    (ep,) = res["episodes"]
    assert ep["error"] is None and 1 <= ep["steps"] <= 10
    assert ep["queries"] == -(-ep["steps"] // 8)  # a chunk of 8 executed, then re-queried
    assert res["settings"]["max_steps"] == 10 and res["settings"]["settle_steps"] == 10
    assert res["settings"]["image_size"] == IMAGE
    out = run_dir / "eval_libero_spatial_step2"
    assert "| **all** |" in (out / "results.md").read_text()
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 1
    with av.open(ep["video"]) as c:  # what the policy saw, one frame per controlled step
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == ep["steps"] and frames[0].shape == (256, 512, 3)


def test_eval_refuses_to_mix_results_and_resumes(evaluated):
    run_dir, res = evaluated
    args = ["eval", "--ckpt", str(run_dir), "--suite", "libero_spatial", "--tasks", "0", "--episodes-per-task",
            "1", "--max-steps", "10"]
    proc = subprocess.run(geo3d(*args), cwd=PACKAGE_ROOT, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 2 and "already holds evaluation results" in proc.stderr
    run([*args, "--resume"])  # everything already done: no episode reruns, same results
    again = json.loads((run_dir / "eval_libero_spatial_step2" / "results.json").read_text())
    assert again["episodes"] == res["episodes"] and again["complete"]


def test_eval_through_the_policy_server(tmp_path_factory, tmp_path):
    runs = trained_runs(tmp_path_factory.getbasetemp() / "eval_runs")
    server = ServeProcess(runs["pool"])
    try:
        run(["eval", "--server", server.url, "--suite", "libero_spatial", "--tasks", "0", "--episodes-per-task", "1",
             "--max-steps", "8", "--out", str(tmp_path / "ev")], timeout=600)
    finally:
        server.stop()
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert res["server"] == server.url and res["complete"] and res["summary"]["episodes"] == 1
    assert Path(res["checkpoint"]).parent == runs["pool"] / "checkpoints"
    (ep,) = res["episodes"]
    assert ep["steps"] >= 1 and ep["queries"] >= 1 and ep["error"] is None


def test_eval_parallel_workers(tmp_path_factory, tmp_path):
    """--workers 2: episodes run in two spawned processes (own policy + simulator each), results merged."""
    runs = trained_runs(tmp_path_factory.getbasetemp() / "eval_runs")
    run(["eval", "--ckpt", str(runs["pool"]), "--suite", "libero_spatial", "--tasks", "0", "--episodes-per-task", "2",
         "--max-steps", "3", "--workers", "2", "--out", str(tmp_path / "ev")], timeout=600)
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert res["complete"] and res["settings"]["workers"] == 2
    assert [e["episode"] for e in res["episodes"]] == [0, 1]
    assert all(e["error"] is None and e["steps"] == 3 or e["success"] for e in res["episodes"])
    assert res["tasks"][0]["episodes"] == 2


def test_sigterm_keeps_finished_episodes_and_resume_completes(tmp_path_factory, tmp_path):
    """SLURM preemption: SIGTERM after the first episode -> exit 75, partial results (complete: false);
    the same command with --resume runs only the missing episode."""
    runs = trained_runs(tmp_path_factory.getbasetemp() / "eval_runs")
    out = tmp_path / "ev"
    args = ["eval", "--ckpt", str(runs["pool"]), "--suite", "libero_spatial", "--tasks", "0", "--episodes-per-task",
            "2", "--max-steps", "6", "--out", str(out)]
    proc = subprocess.Popen(geo3d(*args), cwd=PACKAGE_ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 400  # a guard against a hung simulator, not a speed assertion
    while not ((out / "episodes.jsonl").exists() and (out / "episodes.jsonl").read_text().strip()):
        assert proc.poll() is None and time.monotonic() < deadline, "eval ended before its first episode"
        time.sleep(0.5)
    proc.terminate()
    _, err = proc.communicate(timeout=300)
    partial = json.loads((out / "results.json").read_text())
    if proc.returncode == 0:  # both episodes finished before the signal arrived: nothing left to resume
        print("note: SIGTERM arrived after the last episode; resume path not exercised this time")
        assert partial["complete"]
        return
    assert proc.returncode == PREEMPTED_EXIT_CODE and "terminated (SIGTERM)" in err and "--resume" in err
    assert not partial["complete"] and partial["summary"]["episodes"] == 1
    run([*args, "--resume"], timeout=600)
    final = json.loads((out / "results.json").read_text())
    assert final["complete"] and [e["episode"] for e in final["episodes"]] == [0, 1]
    assert final["episodes"][0] == partial["episodes"][0]  # kept, not rerun
