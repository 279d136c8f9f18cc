"""Open-loop action error vs closed-loop divergence of a trained policy on its own training episodes.

Open loop: at every `stride`-th recorded frame the policy gets the dataset's own images and state (the training
inputs) and its predicted chunk is compared with the recorded actions a[t:t+H] (mean |error| per action
dimension, in the dataset's units). Closed loop: the policy drives the simulator from the episode's init state
under eval's protocol (as `geo3d replay` does, with the policy in place of the recorded actions), and the end
effector's distance from the recorded trajectory at the same step is tracked. A small open-loop error with a
large closed-loop divergence is compounding error (the policy leaves the data's state distribution); a large
open-loop error is underfitting.

    python -m geo3d.evaluation.divergence --ckpt RUN_DIR --suite libero_spatial --episodes 0,2 [--closed-loop]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from geo3d.core import sim
from geo3d.core.config import load_config
from geo3d.core.errors import Geo3dError
from geo3d.core.preemption import PreemptionFlag
from geo3d.data.lerobot_layout import STATE_KEY
from geo3d.data.mixture import LiberoMixture
from geo3d.data.suites import DEMO_DATA_ROOT
from geo3d.evaluation.evaluate import resolve_gl, settings_from
from geo3d.evaluation.policy_handle import load_local_policy
from geo3d.evaluation.replay import dataset_episodes, episode_origin
from geo3d.evaluation.runner import Job, PolicySource, _Worker


def open_loop(policy: Any, mixture: Any, span: Any, stride: int) -> dict[str, Any]:
    """Mean |predicted - recorded| per action dimension over the episode's frames 0, stride, 2*stride, ..."""
    errs, grip_agree = [], []
    for t in range(0, span.length, stride):
        s = mixture[span.start + t]
        pred = np.asarray(policy.predict_action(s["images"], s["instruction"], s["state"]), dtype=np.float64)
        keep = ~np.asarray(s["action_pad"])
        errs.append(np.abs(pred - s["actions"])[keep])
        grip_agree.append(np.mean(np.sign(pred[keep, 6]) == np.sign(s["actions"][keep, 6])))
    e = np.concatenate(errs)
    return {"frames": len(errs), "mean_abs_per_dim": [round(float(x), 4) for x in e.mean(axis=0)],
            "mean_abs_xyz": round(float(e[:, :3].mean()), 4), "gripper_sign_agreement": round(float(np.mean(grip_agree)), 3)}


class _StateLog:
    """Wraps a policy: remembers the (step, state) of every query, so the closed-loop path can be compared."""

    def __init__(self, policy: Any, replan: int) -> None:
        self.policy, self.replan, self.states = policy, replan, []

    def predict_action(self, images: np.ndarray, instruction: str, state: np.ndarray) -> np.ndarray:
        self.states.append(np.asarray(state, dtype=np.float64))
        return self.policy.predict_action(images, instruction, state)


def closed_loop(cfg: Any, policy: Any, mixture: Any, span: Any, suite: str, origin: tuple, max_steps: int,
                video_dir: str | None) -> dict[str, Any]:
    """Run the policy from the episode's scene; eef distance (m) from the recorded path at each query step."""
    task_id, init_state, _, seed = origin
    settings = settings_from(cfg)
    settings = type(settings)(**{**settings.__dict__, "max_steps": max_steps,
                                 "image_size": int(cfg.data.image_size)})
    gl = resolve_gl(str(cfg.eval.gl))
    sim.configure(gl)
    worker = _Worker(PolicySource(), settings, gl, PreemptionFlag())  # no policy episode to stop from outside
    worker.policy = log = _StateLog(policy, settings.replan_steps)
    try:
        res = worker.run(Job(suite, task_id, init_state, seed, video_dir, int(cfg.eval.render_size)))
    finally:
        worker.policy = None  # the loaded policy is not the worker's to close
        worker.close()
    recorded = mixture.datasets[span.dataset_id].episode_columns(span.episode_index)[STATE_KEY]
    dist = [float(np.linalg.norm(s[:3] - recorded[min(k * settings.replan_steps, span.length - 1), :3]))
            for k, s in enumerate(log.states)]
    return {"success": res.success, "steps": res.steps, "video": res.video,
            "eef_divergence_m": [round(d, 4) for d in dist], "max_eef_divergence_m": round(max(dist), 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True, help="run dir or checkpoint dir")
    ap.add_argument("--suite", required=True, help="one demo suite: libero_spatial | libero_object")
    ap.add_argument("--episodes", default=None, help="comma-separated dataset episodes (default: all)")
    ap.add_argument("--stride", type=int, default=4, help="open loop: every N-th frame")
    ap.add_argument("--closed-loop", action="store_true", help="also drive the simulator (minutes per episode)")
    ap.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = ap.parse_args(argv)

    try:
        cfg = load_config(["data", "eval"])
        policy = load_local_policy(args.ckpt, "cpu")
        mixture = LiberoMixture(args.suite, DEMO_DATA_ROOT, action_horizon=int(cfg.data.action_horizon),
                                image_size=int(policy.image_size))
        wanted = [int(e) for e in args.episodes.split(",")] if args.episodes else dataset_episodes(DEMO_DATA_ROOT, args.suite)
        report = []
        for ep in wanted:
            span, origin = mixture.span(0, ep), episode_origin(DEMO_DATA_ROOT, args.suite, ep)
            row = {"suite": args.suite, "episode": ep, "recorded_success": origin[2],
                   "open_loop": open_loop(policy, mixture, span, args.stride)}
            if args.closed_loop:
                vdir = str(args.out.parent / "videos") if args.out else None
                row["closed_loop"] = closed_loop(cfg, policy, mixture, span, args.suite, origin, span.length + 60, vdir)
            print(json.dumps(row), flush=True)
            report.append(row)
    except Geo3dError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
