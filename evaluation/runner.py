"""Evaluate a policy on a LIBERO suite: every (task, init state) episode, optionally in parallel processes.

Each worker process holds one policy handle (a `RemotePolicy` connection to `geo3d serve`, or the policy
loaded in-process) and one simulator env, rebuilt only when its next episode belongs to another task.
Finished episodes are appended to OUT/episodes.jsonl as they arrive, so an interrupted evaluation resumes
(--resume) without rerunning them. Preemption is geo3d.core.preemption's `PreemptionFlag` (one per evaluation, one
per worker process): a signal only sets the flag, and the episode and result loops poll it (raising from a
handler could land inside robosuite/MuJoCo code whose bare `except:` swallows it).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from geo3d.core import sim
from geo3d.core.preemption import PreemptionFlag
from geo3d.evaluation.client import RemotePolicy
from geo3d.evaluation.episode import EpisodeInterrupted, EpisodeResult, EpisodeSettings, run_episode
from geo3d.evaluation.policy_handle import load_local_policy
from geo3d.evaluation.rollout_video import RolloutVideo


@dataclass(frozen=True)
class PolicySource:
    """Where a worker gets its policy: a server URL, or a checkpoint to load in-process."""

    server: str | None = None
    ckpt: str | None = None
    device: str = "auto"
    encoder_weights: str | None = None

    def open(self) -> Any:
        if self.server:
            return RemotePolicy(self.server)

        return load_local_policy(self.ckpt, self.device, self.encoder_weights)


@dataclass(frozen=True)
class Job:
    suite: str
    task_id: int
    episode: int
    seed: int
    video_dir: str | None
    render_size: int = 256


class _Worker:
    """Per-process state: the policy (opened once) and the current task's env (kept across episodes)."""

    def __init__(self, source: PolicySource, settings: EpisodeSettings, gl: str, stop: PreemptionFlag) -> None:
        self.source, self.settings, self.gl, self.stop = source, settings, gl, stop
        self.policy: Any = None
        self.env: Any = None
        self.task: Any = None
        self.init_states: Any = None

    def _env_for(self, job: Job) -> None:
        if self.task is not None and (self.task.suite, self.task.task_id) == (job.suite, job.task_id):
            return
        self.close_env()
        self.task = sim.get_task(job.suite, job.task_id)
        self.init_states = sim.init_states(self.task)
        self.env = sim.make_env(self.task, image_size=job.render_size, seed=job.seed)

    def run(self, job: Job) -> EpisodeResult:
        sim.configure(self.gl)
        if self.policy is None:
            self.policy = self.source.open()
        settings = self.settings
        if settings.image_size is None and getattr(self.policy, "image_size", None):
            settings = EpisodeSettings(**{**settings.__dict__, "image_size": int(self.policy.image_size)})
        self._env_for(job)
        episode_seed = sim.seed_episode(job.seed, job.episode)
        video = RolloutVideo() if job.video_dir else None
        res = run_episode(self.env, self.policy, self.task.language, self.init_states[job.episode], job.task_id,
                          job.episode, settings, on_frame=video.add if video else None, should_stop=lambda: self.stop.requested)
        res.seed = episode_seed
        if video is not None:
            outcome = "success" if res.success else "failure"
            name = f"task{job.task_id:02d}_ep{job.episode:03d}_{outcome}.mp4"
            res.video = str(video.write(Path(job.video_dir) / name))
        return res

    def close_env(self) -> None:
        if self.env is not None:
            self.env.close()
        self.env = self.task = self.init_states = None

    def close(self) -> None:
        """The simulator, and the policy's server connection when it has one."""
        self.close_env()
        close = getattr(self.policy, "close", None)
        if close is not None:
            close()
        self.policy = None


_WORKER: _Worker | None = None


def _init_worker(source: PolicySource, settings: EpisodeSettings, gl: str) -> None:
    global _WORKER
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # SIGUSR1 (SLURM --signal): stop the episode, then exit. SIGTERM keeps its default action here, so the
    # parent's pool.terminate() (SIGTERM) always ends a worker, even one blocked on the task queue.
    stop = PreemptionFlag(("SIGUSR1",)).install()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the main process
    _WORKER = _Worker(source, settings, gl, stop)


def _run_in_worker(job: Job) -> dict[str, Any]:
    assert _WORKER is not None
    return _WORKER.run(job).to_json()


def run_jobs(jobs: list[Job], source: PolicySource, settings: EpisodeSettings, gl: str, workers: int,
             stop: PreemptionFlag) -> Iterable[dict[str, Any]]:
    """Yield each episode's result as it finishes (in-process for 1 worker, else a spawn process pool);
    raises EpisodeInterrupted once `stop` is requested."""
    if workers <= 1:
        worker = _Worker(source, settings, gl, stop)
        try:
            for job in jobs:
                yield worker.run(job).to_json()
        finally:
            worker.close()
        return

    # spawn: MuJoCo/OpenGL contexts and torch threads do not survive fork
    pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(source, settings, gl))
    try:
        results = pool.imap_unordered(_run_in_worker, jobs, chunksize=1)
        for _ in jobs:
            while True:  # poll, so a stop request is seen while every worker is busy
                if stop.requested:
                    raise EpisodeInterrupted("stop requested")
                try:
                    yield results.next(timeout=0.5)
                    break
                except mp.TimeoutError:
                    continue
        pool.close()
    except BaseException:
        pool.terminate()  # stop running episodes too (failure, SIGTERM, Ctrl-C): finished ones are saved
        raise
    finally:
        pool.join()


def read_done(path: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """Episodes already finished in a previous (interrupted) evaluation, keyed by (task_id, episode)."""
    done: dict[tuple[int, int], dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # torn last line of a killed run: that episode simply reruns
            done[(rec["task_id"], rec["episode"])] = rec
    return done
