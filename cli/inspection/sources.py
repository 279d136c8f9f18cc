"""The frame to inspect: a dataset frame through the training path, or a live simulator frame through eval's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from geo3d.core import sim
from geo3d.core.errors import Geo3dError
from geo3d.data.dataset_base import frame_content_id
from geo3d.data.transforms import RAW_RENDER, UPRIGHT, to_model_images
from geo3d.evaluation.evaluate import resolve_gl
from geo3d.evaluation.observation import observation_to_inputs


@dataclass
class Sample:
    """One timestep as the policy gets it. `images`: uint8 [V,S,S,3] the VLM path gets; `geometry_frames`: what
    the geometry encoder path starts from and in which orientation (`frames_to_model_input` brings it upright)."""

    images: np.ndarray
    geometry_frames: np.ndarray
    geometry_orientation: str
    instruction: str
    state: np.ndarray
    content_id: int
    where: dict[str, Any]
    actions: np.ndarray | None = None
    action_pad: np.ndarray | None = None
    source_orientation: str = ""


def dataset_sample(mixture: Any, frame: int) -> Sample:
    """Global frame `frame` of the mixture: `mixture[frame]` is exactly what training's dataset returns."""
    n = len(mixture)
    if not -n <= int(frame) < n:
        raise Geo3dError(f"--frame {frame} is out of range: suite {mixture.suite} has {n} frames (0..{n - 1})")
    item = mixture[int(frame)]
    stored = mixture.read_stored_frames(int(frame))
    orientation = mixture.frame_orientation(item["dataset_id"])
    return Sample(images=item["images"], geometry_frames=stored, geometry_orientation=orientation,
                  instruction=item["instruction"], state=np.asarray(item["state"], np.float32),
                  content_id=frame_content_id(stored), actions=np.asarray(item["actions"], np.float32),
                  action_pad=np.asarray(item["action_pad"], bool), source_orientation=orientation,
                  where={"source": "dataset", "suite": mixture.suite, "global_index": item["global_index"],
                         "dataset": str(mixture.paths[item["dataset_id"]]), "episode_index": item["episode_index"],
                         "frame_index": item["frame_index"]})


def sim_sample(suite: str, task_id: int, init_state: int, image_size: int, eval_cfg: Any) -> Sample:
    """Bundled init state `init_state` of the suite's benchmark task, rendered and settled as `geo3d eval` does,
    mapped to policy inputs by eval's `observation_to_inputs`; the geometry encoder gets those same images."""
    sim.configure(resolve_gl(str(eval_cfg.gl)))
    task = sim.get_task(suite, int(task_id))
    states = sim.init_states(task)
    if not 0 <= int(init_state) < len(states):
        raise Geo3dError(f"--init-state {init_state}: task {task.task_id} of {suite} bundles {len(states)} init "
                         f"states (0..{len(states) - 1})")
    env = sim.make_env(task, image_size=int(eval_cfg.render_size), seed=int(eval_cfg.seed))
    try:
        obs = sim.reset_to(env, states[int(init_state)], int(eval_cfg.settle_steps))
    finally:
        env.close()
    images, state = observation_to_inputs(obs, image_size)
    as_stored = to_model_images(sim.raw_frames(obs), None, RAW_RENDER)  # how a LeRobot dataset would store it
    return Sample(images=images, geometry_frames=images, geometry_orientation=UPRIGHT, instruction=task.language,
                  state=state, content_id=frame_content_id(as_stored), source_orientation=RAW_RENDER,
                  where={"source": "sim", "suite": suite, "task_id": task.task_id, "task_name": task.name,
                         "init_state": int(init_state), "render_size": int(eval_cfg.render_size),
                         "settle_steps": int(eval_cfg.settle_steps), "seed": int(eval_cfg.seed)})
