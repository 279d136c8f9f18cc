"""`geo3d replay`: execute a dataset episode's recorded actions in the simulator under eval's own protocol.

Checks the train <-> simulator conventions without a model. The recorded actions are served by a policy
object (`RecordedPolicy`) through the very episode loop `geo3d eval` runs (`geo3d.evaluation.runner._Worker` ->
`geo3d.evaluation.episode.run_episode`: same env construction, init state, settle steps, chunking, gripper mapping,
image path). Along the way every observation is compared with the dataset: `observation.state` against
`geo3d.core.sim.state_from_obs` (position, axis-angle, gripper qpos), and the images eval hands the policy against
the stored frames after the training image path (codec noise only, both cameras; the same frames turned by
180 degrees are measured too, so an orientation mismatch is named as such). Which init state an episode
started from is read from the dataset root's generation.json (the demo data) or given with --init-state.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geo3d.core import sim
from geo3d.core.errors import Geo3dError
from geo3d.core.preemption import PreemptionFlag
from geo3d.core.sim import raw_frames, state_from_obs
from geo3d.data.lerobot_layout import STATE_KEY
from geo3d.data.mixture import LiberoMixture
from geo3d.data.suites import open_dataset, resolve_suite
from geo3d.data.transforms import RAW_RENDER, to_model_images, to_upright
from geo3d.data.video_decode import VideoFile, encode_av1
from geo3d.evaluation.evaluate import resolve_gl, settings_from
from geo3d.evaluation.observation import observation_to_inputs
from geo3d.evaluation.runner import Job, PolicySource, _Worker

STATE_GROUPS = {"eef_pos": slice(0, 3), "eef_axis_angle": slice(3, 6), "gripper_qpos": slice(6, 8)}
CAMERAS = ("agentview", "wrist")


@dataclass(frozen=True)
class Tolerances:
    """What counts as reproduced: MuJoCo is deterministic, so states match to float32 rounding; AV1 noise."""

    state: float = 1e-4           # max abs difference, metres / radians
    codec_factor: float = 1.25    # mean |eval - stored| may exceed the codec's own round-trip noise by 25%
    codec_slack: float = 0.25     # plus this (pixel values 0..255)


@dataclass
class ReplayReport:
    suite: str
    task_id: int
    init_state: int
    seed: int
    episode: int
    frames: int                       # recorded actions
    steps: int                        # actions executed (stops at success, as eval does)
    recorded_success: bool | None     # generation.json's outcome (None: unknown for this dataset)
    success: bool
    max_state_diff: dict[str, float]  # per STATE_GROUPS part, over every executed step
    worst_state_step: int
    images: dict[str, dict[str, float]]  # per camera: mean_abs, psnr_db, codec_mean_abs, mean_abs_rot180
    seconds: float
    problems: list[str] = field(default_factory=list)
    video: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


class _RecordingEnv:
    """The simulator env, remembering every observation from the moment the policy is first asked."""

    def __init__(self, env: Any) -> None:
        self.env, self.last_obs, self.trace = env, None, None

    def start(self) -> None:
        self.trace = [self.last_obs]

    def _keep(self, obs: Any) -> Any:
        self.last_obs = obs
        if self.trace is not None:
            self.trace.append(obs)
        return obs

    def reset(self) -> Any:
        self.trace = None
        return self._keep(self.env.reset())

    def set_init_state(self, state: np.ndarray) -> Any:
        return self._keep(self.env.set_init_state(state))

    def step(self, action: np.ndarray) -> Any:
        obs, reward, done, info = self.env.step(action)
        return self._keep(obs), reward, done, info

    def close(self) -> None:
        self.env.close()


class RecordedPolicy:
    """Answers each query with the recorded chunk a[t:t+H] (the training target at that step)."""

    def __init__(self, actions: np.ndarray, horizon: int, env: _RecordingEnv, replan_steps: int) -> None:
        self.actions, self.horizon, self.env, self.replan = actions, horizon, env, replan_steps
        self.queries: list[tuple[int, np.ndarray, np.ndarray]] = []  # (step, images, state) eval handed over

    def predict_action(self, images: np.ndarray, instruction: str, state: np.ndarray) -> np.ndarray:
        if not self.queries:
            self.env.start()
        t = len(self.queries) * self.replan
        self.queries.append((t, images, state))
        idx = np.minimum(t + np.arange(self.horizon), len(self.actions) - 1)
        return self.actions[idx]


def episode_origin(data_root: Path, suite: str, episode: int) -> tuple[int, int, bool, int]:
    """(task_id, init_state, success, seed) of a dataset episode from the root's generation.json."""
    gen = data_root / "generation.json"
    if not gen.is_file():
        raise Geo3dError(f"{gen} does not exist, so the episode's simulator task and init state are unknown: "
                         "pass --task ID and --init-state I")
    meta = json.loads(gen.read_text())
    for m in meta["episodes"]:
        if m["suite"] == suite and int(m["episode_index"]) == episode:
            return int(m["task_id"]), int(m["init_state_id"]), bool(m["success"]), int(meta["seed"])
    raise Geo3dError(f"{gen} lists no episode {episode} of {suite}")


def _mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


def codec_roundtrip(frames: np.ndarray, fps: int) -> np.ndarray:
    """Frames [L,H,W,3] through the dataset writer's AV1 encoding and the reader's decoding (the codec noise)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "roundtrip.mp4"
        encode_av1(path, [frames], fps)
        video = VideoFile(path)
        try:
            out = np.stack([f for _, f in video.read(0.0, fps, 0, len(frames))])
        finally:
            video.close()
    return out


def image_errors(trace: list[dict], mixture: Any, span: Any, image_size: int | None, steps: int
                 ) -> dict[str, dict[str, float]]:
    """Per camera, over the executed steps: the images eval hands the policy vs the stored frames after the
    training image path (mean abs, PSNR; the stored frame turned by 180 degrees too), and the codec's own
    noise on these very renders (AV1 round trip, then the same image path) as the yardstick."""
    fps = mixture.datasets[span.dataset_id].fps
    stored_as = mixture.frame_orientation(span.dataset_id)
    evals = np.stack([observation_to_inputs(trace[t], image_size)[0] for t in range(steps)])
    trains = np.stack([mixture[span.start + t]["images"] for t in range(steps)])
    out = {}
    for v, cam in enumerate(CAMERAS):
        # the renders as this dataset stores them (LeRobot: upright; LIBERO HDF5: raw), through the codec and back
        raw = [raw_frames(trace[t])[v] for t in range(steps)]
        renders = np.stack(raw if stored_as == RAW_RENDER else [to_upright(r, RAW_RENDER) for r in raw])
        coded = to_model_images(codec_roundtrip(renders, fps), image_size, stored_as)
        out[cam] = {"mean_abs": _mean_abs(evals[:, v], trains[:, v]), "psnr_db": _psnr(evals[:, v], trains[:, v]),
                    "codec_mean_abs": _mean_abs(evals[:, v], coded),
                    "mean_abs_rot180": _mean_abs(evals[:, v], trains[:, v, ::-1, ::-1])}
    return out


def state_errors(trace: list[dict], mixture: Any, span: Any, steps: int) -> tuple[dict[str, float], int]:
    """Max |state_from_obs - observation.state| per part over the executed steps, and the worst step."""
    recorded = mixture.datasets[span.dataset_id].episode_columns(span.episode_index)[STATE_KEY]
    diffs = np.stack([np.abs(state_from_obs(trace[t]) - recorded[t]) for t in range(steps)])
    return ({name: float(diffs[:, sl].max()) for name, sl in STATE_GROUPS.items()},
            int(np.argmax(diffs.max(axis=1))))


def judge(rep: ReplayReport, tol: Tolerances, full: bool) -> list[str]:
    """Every convention that did not reproduce, in words."""
    problems = []
    if full and rep.recorded_success is not None and rep.success != rep.recorded_success:
        problems.append(f"outcome: recorded success={rep.recorded_success}, replay success={rep.success}")
    for name, d in rep.max_state_diff.items():
        if d > tol.state:
            problems.append(f"state {name} differs by up to {d:.3g} (> {tol.state}) from observation.state "
                            f"(worst at step {rep.worst_state_step})")
    for cam, m in rep.images.items():
        limit = tol.codec_factor * m["codec_mean_abs"] + tol.codec_slack
        if m["mean_abs"] > limit:
            turned = " (the 180-degree turned frame matches: an orientation mismatch)" \
                if m["mean_abs_rot180"] <= limit else ""
            problems.append(f"{cam} images differ beyond codec noise: mean |eval - stored| {m['mean_abs']:.2f} "
                            f"> {limit:.2f} (codec round trip of the same renders: {m['codec_mean_abs']:.2f}){turned}")
    return problems


def dataset_episodes(root: Path, suite: str) -> list[int]:
    """Episode indices of the suite's dataset folder under root."""
    ds = open_dataset(resolve_suite(suite, root)[0])  # LeRobot or LIBERO HDF5, whichever the folder holds
    try:
        return list(ds.episode_indices)
    finally:
        ds.close()


def replay(cfg: Any, suite: str, episode: int, root: Path, task_id: int | None = None, init_state: int | None = None,
           seed: int | None = None, max_steps: int | None = None, video_dir: str | None = None,
           tol: Tolerances = Tolerances()) -> ReplayReport:
    """Replay one episode of `suite`'s dataset folder under `root` and report what differs.

    task/init state/seed default to the dataset's generation.json; the seed falls back to eval.seed."""
    start = time.perf_counter()
    recorded_success = None
    if task_id is None or init_state is None:
        task_id, init_state, recorded_success, gen_seed = episode_origin(root, suite, episode)
        seed = gen_seed if seed is None else seed
    seed = int(cfg.eval.seed) if seed is None else int(seed)
    mixture = LiberoMixture(suite, root, action_horizon=int(cfg.data.action_horizon),
                            image_size=cfg.data.image_size)
    try:
        ds = mixture.datasets[0]
        if episode not in ds.episode_indices:
            raise Geo3dError(f"{ds.path} has no episode {episode}; it has {ds.episode_indices}")
        span = mixture.span(0, episode)
        actions = ds.episode_columns(episode)["action"].astype(np.float32)
        cap = span.length if max_steps is None else min(int(max_steps), span.length)
        settings = settings_from(cfg)
        settings = type(settings)(**{**settings.__dict__, "max_steps": cap, "image_size": cfg.data.image_size})
        gl = resolve_gl(str(cfg.eval.gl))
        sim.configure(gl)
        job = Job(suite, task_id, init_state, seed, video_dir, int(cfg.eval.render_size))
        worker = _Worker(PolicySource(), settings, gl, PreemptionFlag())  # replay runs no policy episode to stop
        try:
            worker._env_for(job)  # eval's own env construction, wrapped so every observation is kept
            worker.env = env = _RecordingEnv(worker.env)
            worker.policy = RecordedPolicy(actions, int(cfg.data.action_horizon), env, settings.replan_steps)
            res = worker.run(job)
        finally:
            worker.close()
        if res.error:
            raise Geo3dError(f"the simulator failed during the replay: {res.error}")
        assert env.trace is not None
        state, worst = state_errors(env.trace, mixture, span, res.steps)
        images = image_errors(env.trace, mixture, span, cfg.data.image_size, res.steps)
    finally:
        mixture.close()
    rep = ReplayReport(suite, task_id, init_state, seed, episode, span.length, res.steps, recorded_success,
                       res.success, state, worst, images, round(time.perf_counter() - start, 1), video=res.video)
    rep.problems = judge(rep, tol, full=cap == span.length)
    return rep


def markdown(reports: list[ReplayReport]) -> str:
    """One row per replayed episode."""
    head = ("| suite | episode | task | init | steps/frames | recorded | replay | max state diff (pos / aa / grip) "
            "| agentview mean abs (codec) | wrist mean abs (codec) | ok |\n|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for r in reports:
        s, a, w = r.max_state_diff, r.images["agentview"], r.images["wrist"]
        rows.append(f"| {r.suite} | {r.episode} | {r.task_id} | {r.init_state} | {r.steps}/{r.frames} | "
                    f"{r.recorded_success} | {r.success} | {s['eef_pos']:.2g} / {s['eef_axis_angle']:.2g} / "
                    f"{s['gripper_qpos']:.2g} | {a['mean_abs']:.2f} ({a['codec_mean_abs']:.2f}) | "
                    f"{w['mean_abs']:.2f} ({w['codec_mean_abs']:.2f}) | {'yes' if r.ok else 'NO'} |")
    return "\n".join([head, *rows])


def write_reports(reports: list[ReplayReport], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "replay.json").write_text(json.dumps([r.to_json() for r in reports], indent=2) + "\n")
    (out / "replay.md").write_text(markdown(reports) + "\n")
    return out / "replay.json"
