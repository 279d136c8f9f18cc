"""`geo3d eval` logic: resolve settings and output, run every episode, write results (JSON + markdown)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from geo3d.core import sim
from geo3d.core.config import save_resolved
from geo3d.core.errors import Geo3dError
from geo3d.core.preemption import Preempted, PreemptionFlag
from geo3d.core.provenance import provenance
from geo3d.data.orientation import orientation_probe, refuse_old_orientation
from geo3d.evaluation.client import RemotePolicy
from geo3d.evaluation.episode import MAX_STEPS, EpisodeInterrupted, EpisodeSettings
from geo3d.evaluation.results import markdown, summarize, write_json_atomic
from geo3d.evaluation.runner import Job, PolicySource, read_done, run_jobs
from geo3d.policy.pretrained import read_marker, resolve_checkpoint

EPISODES_FILE, RESULTS_FILE, TABLE_FILE = "episodes.jsonl", "results.json", "results.md"


def select_tasks(tasks: list[Any], wanted: Any) -> list[Any]:
    """All tasks, or the subset named by ids / names / instructions (a list or a comma-separated string)."""
    if wanted is None or wanted == "":
        return tasks
    items = [w.strip() for w in wanted.split(",")] if isinstance(wanted, str) else [str(w) for w in wanted]
    chosen = []
    for w in items:
        match = [t for t in tasks if w in (str(t.task_id), t.name, t.language)]
        if not match:
            raise Geo3dError(f"no task {w!r} in {tasks[0].suite if tasks else 'the suite'}; use task ids "
                             f"0..{len(tasks) - 1} or names: " + ", ".join(t.name for t in tasks))
        chosen += [t for t in match if t not in chosen]
    return chosen


def checkpoint_of(source: PolicySource) -> tuple[str | None, int | None, int | None, dict[str, Any]]:
    """(checkpoint dir, step, image size, what the policy is: compressor, tap, preset) of the evaluated policy,
    from --ckpt (its checkpoint.json) or the server's metadata."""
    if source.server:
        client = RemotePolicy(source.server, connect_timeout=30)
        try:
            meta = client.metadata
        finally:
            client.close()
        return meta.get("checkpoint"), meta.get("step"), meta.get("image_size"), {"compressor": meta.get("compressor")}

    ckpt = resolve_checkpoint(source.ckpt)
    marker = read_marker(ckpt)
    image_size = OmegaConf.select(OmegaConf.load(ckpt / "config.yaml"), "data.image_size", default=None)
    policy = {k: marker.get(k) for k in ("compressor", "tap", "preset")}
    return str(ckpt), int(marker["step"]), None if image_size is None else int(image_size), policy


def default_out(ckpt: str | None, step: int | None, suite: str) -> Path:
    """RUN_DIR/eval_<suite>_step<N> for a run's checkpoint (where `geo3d report RUN_DIR` looks)."""
    if ckpt is None:
        raise Geo3dError("cannot tell where results go (the server did not name its checkpoint): pass --out")
    ck = Path(ckpt)
    run_dir = ck.parent.parent if ck.parent.name == "checkpoints" else ck
    if not run_dir.is_dir():  # a server on another machine names a path that does not exist here
        raise Geo3dError(f"the policy's run directory {run_dir} is not on this machine: pass --out")
    return run_dir / f"eval_{suite}_step{step}"


def prepare_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix or silently replace results; --resume continues, --overwrite starts over."""
    existing = [out / f for f in (EPISODES_FILE, RESULTS_FILE, TABLE_FILE) if (out / f).exists()]
    if existing and not resume:
        if not overwrite:
            raise Geo3dError(f"{out} already holds evaluation results; pass --resume to continue them, "
                             "--overwrite to start over, or --out elsewhere")
        for f in existing:
            f.unlink()
    out.mkdir(parents=True, exist_ok=True)


# eval settings that change an episode's outcome: a resumed evaluation must keep them (workers, video, device,
# tasks and episodes_per_task may change).
OUTCOME_KEYS = ("suite", "max_steps", "settle_steps", "replan_steps", "gripper", "render_size", "seed")


def check_resume_matches(out: Path, cfg: DictConfig, ckpt: str | None) -> None:
    """--resume must not mix episodes run under other settings or another checkpoint into one success rate."""
    saved_cfg, saved_res = out / "resolved_config.yaml", out / RESULTS_FILE
    diffs = []
    if saved_cfg.exists():
        saved = OmegaConf.load(saved_cfg)
        for key in OUTCOME_KEYS:
            before = OmegaConf.select(saved, f"eval.{key}", default=None)
            now = OmegaConf.select(cfg, f"eval.{key}", default=None)
            if OmegaConf.is_config(before):
                before, now = OmegaConf.to_container(before), OmegaConf.to_container(now)
            if before != now:
                diffs.append(f"eval.{key}: results have {before!r}, now {now!r}")
    if saved_res.exists():
        refuse_old_orientation(json.loads(saved_res.read_text()).get("image_orientation"),
                               f"the evaluation in {out}", "Start it over with --overwrite (or --out elsewhere), "
                               "with a checkpoint trained by this version.")
    if saved_res.exists() and ckpt is not None:
        before = json.loads(saved_res.read_text()).get("checkpoint")
        if before is not None and before != ckpt:
            diffs.append(f"checkpoint: results have {before}, now {ckpt}")
    if diffs:
        raise Geo3dError(f"--resume: {out} holds episodes run with other settings:\n  " + "\n  ".join(diffs)
                         + "\nresume with the same settings, or pass --out elsewhere (or --overwrite to start over)")


def resolve_gl(gl: str) -> str:
    if gl != "auto":
        return gl

    return "egl" if torch.cuda.is_available() else "osmesa"


def settings_from(cfg: DictConfig) -> EpisodeSettings:
    e = cfg.eval
    if e.suite not in MAX_STEPS:
        raise Geo3dError(f"unknown suite {e.suite!r}; choose one of {', '.join(MAX_STEPS)}")
    max_steps = int(e.max_steps) if e.max_steps is not None else MAX_STEPS[e.suite]
    if max_steps < 1 or int(e.episodes_per_task) < 1 or int(e.replan_steps) < 1 or int(e.settle_steps) < 0:
        raise Geo3dError("eval.max_steps, episodes_per_task and replan_steps must be >= 1, settle_steps >= 0")
    return EpisodeSettings(max_steps=max_steps, settle_steps=int(e.settle_steps), replan_steps=int(e.replan_steps),
                           gripper_sign=float(e.gripper.sim_sign), binarize_gripper=bool(e.gripper.binarize))


def evaluate(cfg: DictConfig, source: PolicySource, resume: bool, overwrite: bool) -> dict[str, Any]:
    """Run the evaluation described by `cfg.eval` and return the results written to OUT/results.json."""
    e = cfg.eval
    settings = settings_from(cfg)
    ckpt, step, image_size, policy = checkpoint_of(source)  # a wrong --ckpt / --server fails before the simulator loads
    settings = EpisodeSettings(**{**settings.__dict__, "image_size": image_size})
    gl = resolve_gl(str(e.gl))
    sim.configure(gl)
    tasks = select_tasks(sim.list_tasks(e.suite), e.tasks)
    n_init = len(sim.init_states(tasks[0]))
    if int(e.episodes_per_task) > n_init:
        raise Geo3dError(f"{e.suite} bundles {n_init} init states per task; --episodes-per-task must be <= {n_init}")
    out = Path(e.out) if e.out else default_out(ckpt, step, e.suite)
    if resume:
        check_resume_matches(out, cfg, ckpt)
    prepare_out(out, resume, overwrite)
    save_resolved(cfg, out)
    video_dir = str(out / "videos") if e.video else None
    done = read_done(out / EPISODES_FILE)
    jobs = [Job(e.suite, t.task_id, i, int(e.seed), video_dir, int(e.render_size))
            for t in tasks for i in range(int(e.episodes_per_task)) if (t.task_id, i) not in done]
    episodes = [rec for (tid, i), rec in done.items()
                if any(t.task_id == tid for t in tasks) and i < int(e.episodes_per_task)]
    start, complete = time.perf_counter(), False
    stop = PreemptionFlag().install()  # scancel/preemption: keep results, exit 75; Ctrl-C: the same, exit 130
    bar = tqdm(total=len(jobs) + len(episodes), initial=len(episodes), desc=f"eval {e.suite}", unit="ep")
    try:
        with (out / EPISODES_FILE).open("a") as log:
            for rec in run_jobs(jobs, source, settings, gl, int(e.workers), stop):
                log.write(json.dumps(rec) + "\n")
                log.flush()
                episodes.append(rec)
                bar.update(1)
                bar.set_postfix(success=f"{sum(r['success'] for r in episodes)}/{len(episodes)}")
        complete = True
    except EpisodeInterrupted:
        raise Preempted(f"evaluation terminated ({stop.signal_name or 'a stop request'}) after {len(episodes)} "
                        f"episodes; they are kept in {out / EPISODES_FILE}: rerun the same command with --resume",
                        stop.signal_name) from None
    finally:
        bar.close()
        episodes.sort(key=lambda r: (r["task_id"], r["episode"]))
        rows, summary = summarize(episodes, tasks)
        results = {"suite": e.suite, "complete": complete, "checkpoint": ckpt, "step": step, "policy": policy,
                   "server": source.server, "summary": summary, "tasks": rows, "episodes": episodes,
                   "settings": {**settings.__dict__, "episodes_per_task": int(e.episodes_per_task),
                                "render_size": int(e.render_size), "seed": int(e.seed), "gl": gl,
                                "workers": int(e.workers)},
                   "seconds": round(time.perf_counter() - start, 1), "provenance": provenance(),
                   "image_orientation": orientation_probe(),
                   "config": OmegaConf.to_container(cfg, resolve=True)}
        write_json_atomic(out / RESULTS_FILE, results)
        (out / TABLE_FILE).write_text(markdown(results))
        stop.restore()  # after the results are written: a second signal must not kill that
    results["out"] = str(out)
    return results
