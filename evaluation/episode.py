"""One closed-loop LIBERO episode: bundled init state, settle, query a chunk, execute it, re-query, until
success or the step cap. Mirrors the evaluation protocol of the field (openvla / openpi / StarVLA)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from geo3d.core.sim import reset_to, state_digest
from geo3d.evaluation.observation import observation_to_inputs, upright_frame
from geo3d.evaluation.policy_handle import Policy, check_action_chunk

# The standard per-suite step caps (longest training demo of each suite, rounded up), as LIBERO evaluations use.
MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520}


@dataclass(frozen=True)
class EpisodeSettings:
    max_steps: int
    settle_steps: int = 10       # no-op steps after reset so objects settle (not counted in max_steps)
    replan_steps: int = 8        # actions executed from each chunk before re-querying (<= chunk length)
    gripper_sign: float = 1.0    # dataset gripper (-1 open / +1 close) times this = the simulator's command
    binarize_gripper: bool = True  # send exactly -1 / +1, as in the datasets' actions
    image_size: int | None = None  # the policy's input size (None: leave frames at render size)


class EpisodeInterrupted(Exception):
    """A stop was requested (SIGTERM): the unfinished episode is discarded, not scored."""


@dataclass
class EpisodeResult:
    task_id: int
    episode: int                 # index of the bundled init state
    success: bool
    steps: int                   # policy-controlled steps taken
    queries: int                 # policy calls
    seconds: float
    error: str | None = None     # simulator failure (counted as a failed episode)
    video: str | None = None
    seed: int | None = None      # the episode seed (geo3d.core.sim.seed_episode: eval.seed * 1000 + init state)
    final_state: str | None = None  # sha256/16 of the simulator state at the end (geo3d.core.sim.state_digest)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def sim_gripper(gripper: float, sign: float, binarize: bool) -> float:
    """Dataset gripper (-1 open / +1 close) -> the simulator's gripper command: times `sign`, then exactly
    -1 / +1 (threshold 0) when binarized, else clipped to [-1, 1]. The one gripper mapping of geo3d's eval;
    `geo3d serve`'s client profiles derive their units from it (evaluation/protocols.py)."""
    g = float(gripper) * sign
    return (1.0 if g > 0 else -1.0) if binarize else float(np.clip(g, -1.0, 1.0))


def to_sim_action(action: np.ndarray, settings: EpisodeSettings) -> np.ndarray:
    """Dataset-convention action [7] -> the command `env.step` expects (arm deltas unchanged)."""
    out = np.asarray(action, dtype=np.float64).copy()
    out[6] = sim_gripper(out[6], settings.gripper_sign, settings.binarize_gripper)
    return out


def run_episode(env: Any, policy: Policy, instruction: str, init_state: np.ndarray, task_id: int, episode: int,
                settings: EpisodeSettings, on_frame: Callable[[np.ndarray], None] | None = None,
                should_stop: Callable[[], bool] = lambda: False) -> EpisodeResult:
    """Run one episode. A simulator exception (e.g. MuJoCo instability) ends it as a failure with the error
    recorded; policy errors propagate: a broken policy or a lost server must stop the evaluation, not
    score zeros. `should_stop` is polled every step (EpisodeInterrupted)."""
    start = time.perf_counter()
    steps = queries = 0

    def result(success: bool, error: str | None = None) -> EpisodeResult:
        try:
            digest = state_digest(env)
        except Exception:  # a simulator that just failed may not give its state: the error is recorded anyway
            digest = None
        return EpisodeResult(task_id, episode, success, steps, queries, time.perf_counter() - start, error,
                             final_state=digest)

    try:
        obs = reset_to(env, init_state, settings.settle_steps)
    except Exception as e:
        return result(False, f"reset: {type(e).__name__}: {e}")
    queue: list[np.ndarray] = []
    while steps < settings.max_steps:
        if should_stop():
            raise EpisodeInterrupted(f"task {task_id} episode {episode} interrupted at step {steps}")
        if on_frame is not None:
            on_frame(upright_frame(obs))
        if not queue:
            images, state = observation_to_inputs(obs, settings.image_size)
            chunk = check_action_chunk(policy.predict_action(images, instruction, state))
            queries += 1
            queue = list(chunk[: max(1, min(settings.replan_steps, len(chunk)))])
        try:
            obs, _, done, _ = env.step(to_sim_action(queue.pop(0), settings))
        except Exception as e:
            return result(False, f"step {steps}: {type(e).__name__}: {e}")
        steps += 1
        if done:
            return result(True)
    return result(False)
