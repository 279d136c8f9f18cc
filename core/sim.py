"""Small, shared setup for the LIBERO simulator (demo-data generation and `geo3d eval`).

LIBERO is imported lazily (only inside functions): it is an optional extra (`make sim`), it reads its config
at import time and would prompt on stdin without one, and MuJoCo picks its GL backend from environment
variables that must be set before the first import. `configure()` handles all three.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geo3d.core.errors import Geo3dError

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
INSTALL_HINT = "install the simulator with `make sim` (or `bash scripts/install_sim.sh <python>`)"


def libero_config_dir() -> Path:
    """Where scripts/install_sim.sh writes LIBERO's config.yaml (inside the environment, not ~/.libero)."""
    return Path(os.environ.get("LIBERO_CONFIG_PATH") or Path(sys.prefix) / "etc" / "libero")


def configure(gl: str = "osmesa") -> None:
    """Set MUJOCO_GL/PYOPENGL_PLATFORM and LIBERO_CONFIG_PATH before libero/mujoco are imported.

    `gl` is `osmesa` (CPU, Debian libosmesa6) or `egl` (GPU nodes / Mesa llvmpipe). An explicit MUJOCO_GL
    in the environment wins; PYOPENGL_PLATFORM follows it (mixing the two settings breaks rendering).
    """
    backend = os.environ.setdefault("MUJOCO_GL", gl)
    os.environ["PYOPENGL_PLATFORM"] = backend
    cfg = libero_config_dir()
    if not (cfg / "config.yaml").is_file():
        raise Geo3dError(f"no LIBERO config at {cfg / 'config.yaml'}: {INSTALL_HINT}, or set LIBERO_CONFIG_PATH "
                         "to a directory holding config.yaml")
    os.environ["LIBERO_CONFIG_PATH"] = str(cfg)


@dataclass(frozen=True)
class SimTask:
    """One LIBERO task: where it lives in its suite and the instruction the benchmark gives for it."""

    suite: str
    task_id: int
    name: str
    language: str
    bddl_file: Path


def _benchmark(suite: str) -> Any:
    if suite not in SUITES:
        raise Geo3dError(f"unknown LIBERO suite {suite!r}; choose one of {', '.join(SUITES)}")
    configure()
    try:
        from libero.libero import benchmark
    except ImportError as exc:
        raise Geo3dError(f"the LIBERO simulator is not installed ({exc}): {INSTALL_HINT}") from exc
    return benchmark.get_benchmark_dict()[suite]()


def list_tasks(suite: str) -> list[SimTask]:
    """The suite's tasks in benchmark order (task_id = LIBERO's task index)."""
    bench = _benchmark(suite)
    return [SimTask(suite, i, t.name, t.language, Path(bench.get_task_bddl_file_path(i)))
            for i, t in enumerate(bench.tasks)]


def get_task(suite: str, task: str | int) -> SimTask:
    """Look a task up by its index, its name (bddl stem) or its instruction."""
    tasks = list_tasks(suite)
    for t in tasks:
        if task in (t.task_id, t.name, t.language) or str(task) == str(t.task_id):
            return t
    raise Geo3dError(f"no task {task!r} in {suite}; known: " + "; ".join(t.name for t in tasks))


def init_states(task: SimTask) -> np.ndarray:
    """The benchmark's bundled initial states for the task ([50, state_dim] for the standard suites)."""
    return np.asarray(_benchmark(task.suite).get_task_init_states(task.task_id))


def make_env(task: SimTask, image_size: int = 256, seed: int = 0) -> Any:
    """An OffScreenRenderEnv (OSC_POSE, 20 Hz, agentview + wrist cameras) for the task."""
    configure()
    from libero.libero.envs import OffScreenRenderEnv

    env = OffScreenRenderEnv(bddl_file_name=str(task.bddl_file), camera_heights=image_size,
                             camera_widths=image_size)
    env.seed(seed)
    return env


NOOP = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float32)  # hold still, gripper open


def seed_episode(seed: int, init_id: int) -> int:
    """Seed python, numpy and torch for one episode with seed * 1000 + init state id; returns that episode seed.

    Why before every reset: LIBERO places the fixtures (cabinet, stove, ...) at `env.reset()` from numpy's
    global RNG, and `set_init_state` restores only the jointed bodies. The same (seed, init state) therefore
    gives the same scene only when the RNG is seeded the same way right before the reset: eval and the
    demo-data generator both call this. The flow-matching sampler also draws from torch's global RNG.
    """
    s = int(seed) * 1000 + int(init_id)
    random.seed(s)
    np.random.seed(s % 2**32)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(s)
    return s


def state_digest(env: Any) -> str | None:
    """A short sha256 of the simulator's full MuJoCo state (time, qpos, qvel, ...): two runs of an episode ended in
    the same state exactly when these agree. None for an env without `get_sim_state`."""
    get = getattr(env, "get_sim_state", None)
    if get is None:
        return None
    return hashlib.sha256(np.ascontiguousarray(np.asarray(get(), dtype=np.float64)).tobytes()).hexdigest()[:16]


def reset_to(env: Any, init_state: np.ndarray, settle_steps: int = 10) -> dict:
    """Reset to a bundled initial state and let objects settle (as LIBERO's evaluation does)."""
    env.reset()
    obs = env.set_init_state(init_state)
    for _ in range(settle_steps):
        obs, _, _, _ = env.step(NOOP)
    return obs


def quat_to_axis_angle(quat_xyzw: np.ndarray) -> np.ndarray:
    """robosuite quaternion (x, y, z, w) -> axis-angle (3), the convention of the LIBERO datasets' state."""
    q = np.asarray(quat_xyzw, dtype=np.float64)
    w = float(np.clip(q[3], -1.0, 1.0))
    den = math.sqrt(1.0 - w * w)
    if den < 1e-8:
        return np.zeros(3, dtype=np.float32)
    return (q[:3] * 2.0 * math.acos(w) / den).astype(np.float32)


def state_from_obs(obs: dict) -> np.ndarray:
    """observation.state as the LIBERO LeRobot datasets store it: eef xyz, eef axis-angle, 2 gripper qpos."""
    return np.concatenate([obs["robot0_eef_pos"], quat_to_axis_angle(obs["robot0_eef_quat"]),
                           obs["robot0_gripper_qpos"]]).astype(np.float32)


def raw_frames(obs: dict) -> np.ndarray:
    """(agentview, wrist) as the simulator renders them, uint8 [2,H,W,3] in orientation `raw_render`.

    robosuite renders upside down; `geo3d.data.transforms.to_model_images(..., RAW_RENDER)` turns them
    180 degrees once (openvla's `obs["agentview_image"][::-1, ::-1]`), which is how the upright LeRobot
    datasets store them, so policies see the same pixels in training and in the simulator.
    """
    return np.stack([obs["agentview_image"], obs["robot0_eye_in_hand_image"]])
