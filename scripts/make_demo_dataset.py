"""Render the shipped demo dataset (demo_data/) with the real LIBERO simulator and a scripted pick-and-place.

    make sim
    .venv/bin/python scripts/make_demo_dataset.py                      # render + write demo_data/ (~3 min idle)
    .venv/bin/python scripts/make_demo_dataset.py --from-raw           # re-write demo_data/ from saved .npz

Why scripted: the demo dataset must exist without downloading anything, and its actions must look like the
IPEC LIBERO data a policy trains on (OSC_POSE deltas in [-1, 1], translation 1.0 = 0.05 m = robosuite's
controller output_max, rotation ~0, gripper -1 open / +1 close). A waypoint controller over the simulator's
object poses gives smooth, purposeful motion: above the object, descend, close, lift, above the target
(plate / basket), lower, open. Each episode's raw arrays are saved as .npz as soon as it is rendered so a
crash never costs a re-render; the dataset folders are then written by geo3d.data.lerobot_writer (v2.0, AV1).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from geo3d.core import sim  # noqa: E402
from geo3d.data.transforms import RAW_RENDER, to_model_images  # noqa: E402
from geo3d.data.lerobot_writer import EpisodeArrays, write_lerobot_dataset  # noqa: E402
from geo3d.core.errors import Geo3dError  # noqa: E402

# Suite -> dataset folder name (as geo3d.data.suites resolves `demo`) and the tasks/init states rendered.
FOLDERS = {"libero_spatial": "libero_spatial_no_noops_1.0.0_lerobot",
           "libero_object": "libero_object_no_noops_1.0.0_lerobot"}
DEFAULT_PLAN = {"libero_spatial": [0, 1], "libero_object": [0, 1]}

POS_SCALE = 0.05     # m per unit action: robosuite OSC_POSE output_max for translation
MAX_SPEED = 0.8      # |action| cap while moving (the IPEC data rarely saturates)
CARRY_SPEED = 0.6    # slower while holding a bowl: a fast swing makes it slip out of the fingers
MAX_DELTA = 0.15     # max change of a translation action between consecutive steps (smoothness)
GAIN = 1.2           # proportional gain on the position error (in action units per 0.05 m)
OPEN, CLOSE = -1.0, 1.0


@dataclass
class Waypoint:
    """Drive the end effector to `pos` with the gripper at `grip`; done within `tol` m or after `max_steps`."""

    name: str
    pos: np.ndarray
    grip: float
    tol: float = 0.015
    max_steps: int = 40
    min_steps: int = 0
    speed: float = MAX_SPEED


@dataclass
class Episode:
    """Raw arrays of one rendered episode plus what the simulator said about it."""

    agentview: list = field(default_factory=list)
    wrist: list = field(default_factory=list)
    state: list = field(default_factory=list)
    action: list = field(default_factory=list)
    success: bool = False
    phases: list = field(default_factory=list)
    obj_pos: list = field(default_factory=list)   # picked object's position per step (for the record)
    target_pos: list = field(default_factory=list)


def _body_of(env, region_or_object: str) -> str:
    """The object whose pose stands for a goal argument (`basket_1_contain_region` -> `basket_1`)."""
    names = sorted(env.env.objects_dict, key=len, reverse=True)
    for n in names:
        if region_or_object == n or region_or_object.startswith(n + "_"):
            return n
    raise Geo3dError(f"goal refers to {region_or_object!r}, which is none of the objects {names}")


def goal_objects(env) -> tuple[str, str]:
    """(object to pick, object to place it on/in) from the task's BDDL goal, e.g. ('on', bowl, plate)."""
    goal = env.env.parsed_problem["goal_state"]
    if len(goal) != 1 or len(goal[0]) != 3 or goal[0][0] not in ("on", "in"):
        raise Geo3dError(f"the scripted controller handles one 'on'/'in' goal, got {goal}")
    _, obj, target = goal[0]
    return _body_of(env, obj), _body_of(env, target)


def plan_waypoints(obs: dict, obj: str, target: str) -> list[Waypoint]:
    """Pick-and-place waypoints from the object poses at the start of the episode.

    Bowls are taken by the rim on the side facing the robot (the fingers close along world y); other
    objects from the top at their centre. The object is released with the same eef-object offset above
    the target, so it lands centred on the plate / in the basket.
    """
    eef, p_obj, p_tgt = obs["robot0_eef_pos"], obs[f"{obj}_pos"], obs[f"{target}_pos"]
    if "bowl" in obj:
        grasp = p_obj + np.array([0.0, -0.045 if eef[1] < p_obj[1] else 0.045, 0.03])
    else:
        grasp = p_obj + np.array([0.0, 0.0, 0.01])
    offset = grasp - p_obj
    carry = CARRY_SPEED if "bowl" in obj else MAX_SPEED
    above = 0.12
    release_h = 0.10 if "basket" in target else 0.06
    carry_z = max(grasp[2], p_tgt[2]) + above + 0.04
    release = p_tgt + np.array([offset[0], offset[1], 0.0])
    release[2] = p_tgt[2] + release_h + offset[2]
    return [
        Waypoint("above_object", grasp + [0, 0, above], OPEN, tol=0.02, max_steps=45),
        Waypoint("descend", grasp, OPEN, tol=0.01, max_steps=30),
        Waypoint("close", grasp, CLOSE, tol=0.0, max_steps=10, min_steps=10),
        Waypoint("lift", np.r_[grasp[:2], carry_z], CLOSE, tol=0.02, max_steps=25, speed=carry),
        Waypoint("above_target", np.r_[release[:2], carry_z], CLOSE, tol=0.03, max_steps=45, speed=carry),
        Waypoint("lower", release, CLOSE, tol=0.015, max_steps=20, speed=carry),
        Waypoint("open", release, OPEN, tol=0.0, max_steps=8, min_steps=8),
        Waypoint("retreat", release + [0, 0, 0.10], OPEN, tol=0.01, max_steps=20, min_steps=15),
    ]


def next_action(prev: np.ndarray, eef: np.ndarray, wp: Waypoint) -> np.ndarray:
    """Proportional step toward the waypoint, speed-capped and rate-limited; rotation held at 0."""
    raw = np.clip(GAIN * (wp.pos - eef) / POS_SCALE, -wp.speed, wp.speed)
    xyz = prev[:3] + np.clip(raw - prev[:3], -MAX_DELTA, MAX_DELTA)
    return np.r_[np.clip(xyz, -1.0, 1.0), 0.0, 0.0, 0.0, wp.grip].astype(np.float32)


def run_episode(env, init_state: np.ndarray, max_steps: int) -> Episode:
    """Reset to the bundled init state and run the scripted controller, recording every (obs, action)."""
    obs = sim.reset_to(env, init_state)
    obj, target = goal_objects(env)
    waypoints = plan_waypoints(obs, obj, target)
    ep, action = Episode(), sim.NOOP.copy()
    wi, in_phase = 0, 0
    while len(ep.action) < max_steps and wi < len(waypoints):
        wp = waypoints[wi]
        action = next_action(action, obs["robot0_eef_pos"], wp)
        agent, wrist = to_model_images(sim.raw_frames(obs), None, RAW_RENDER)  # stored upright, as IPEC/openvla
        ep.agentview.append(agent)
        ep.wrist.append(wrist)
        ep.state.append(sim.state_from_obs(obs))
        ep.action.append(action)
        ep.obj_pos.append(np.asarray(obs[f"{obj}_pos"], dtype=np.float32))
        ep.target_pos.append(np.asarray(obs[f"{target}_pos"], dtype=np.float32))
        obs, _, done, _ = env.step(action)
        ep.success = ep.success or bool(done) or bool(env.env._check_success())
        in_phase += 1
        reached = np.linalg.norm(wp.pos - obs["robot0_eef_pos"]) <= wp.tol
        if (reached and in_phase >= wp.min_steps) or in_phase >= wp.max_steps:
            ep.phases.append((wp.name, in_phase, bool(reached)))
            wi, in_phase = wi + 1, 0
    return ep


# --------------------------------------------------------------------------------------------- rendering


def raw_path(raw_dir: Path, suite: str, task_id: int, init_id: int) -> Path:
    return raw_dir / f"{suite}_task{task_id:02d}_init{init_id:02d}.npz"


def save_raw(path: Path, ep: Episode, meta: dict) -> None:
    """Write one episode's arrays + metadata atomically (a crash leaves no half file)."""
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, agentview=np.stack(ep.agentview), wrist=np.stack(ep.wrist), state=np.stack(ep.state),
             action=np.stack(ep.action), obj_pos=np.stack(ep.obj_pos), target_pos=np.stack(ep.target_pos),
             meta=np.array(json.dumps(meta)))
    tmp.replace(path)


def controller_settings(max_steps: int, seed: int) -> dict:
    """What an episode depends on besides its task and init state: a cached .npz is reused only if equal."""
    return dict(pos_scale_m=POS_SCALE, max_speed=MAX_SPEED, carry_speed_bowl=CARRY_SPEED, max_delta=MAX_DELTA,
                gain=GAIN, max_steps=max_steps, seed=seed, scene_seed="geo3d.core.sim.seed_episode(seed, init_state)")


def _is_rendered(path: Path, settings: dict) -> bool:
    if not path.is_file():
        return False
    with np.load(path) as z:
        return json.loads(str(z["meta"])).get("controller") == settings


def render_all(plan: dict[str, list[int]], init_ids: list[int], raw_dir: Path, max_steps: int, seed: int) -> None:
    """Render every (task, init state) not yet in raw_dir with the current settings, one env per task."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    settings = controller_settings(max_steps, seed)
    for suite, task_ids in plan.items():
        for task_id in task_ids:
            todo = [i for i in init_ids if not _is_rendered(raw_path(raw_dir, suite, task_id, i), settings)]
            if not todo:
                continue
            task = sim.get_task(suite, task_id)
            states = sim.init_states(task)
            t0 = time.time()
            env = sim.make_env(task, image_size=256, seed=seed)
            env_s = time.time() - t0
            try:
                for init_id in todo:
                    t1 = time.time()
                    sim.seed_episode(seed, init_id)  # the scene eval rebuilds for (seed, init state)
                    ep = run_episode(env, states[init_id], max_steps)
                    meta = dict(suite=suite, task_id=task_id, task_name=task.name, instruction=task.language,
                                init_state_id=init_id, length=len(ep.action), success=ep.success,
                                phases=[list(p) for p in ep.phases], render_seconds=round(time.time() - t1, 1),
                                env_creation_seconds=round(env_s, 1), controller=settings)
                    save_raw(raw_path(raw_dir, suite, task_id, init_id), ep, meta)
                    print(f"[demo] {suite} task {task_id} init {init_id}: {len(ep.action)} steps, "
                          f"success={ep.success}, {meta['render_seconds']} s", flush=True)
            finally:
                env.close()


# ---------------------------------------------------------------------------------------------- writing


def load_raw(path: Path) -> tuple[EpisodeArrays, dict]:
    z = np.load(path)
    meta = json.loads(str(z["meta"]))
    return EpisodeArrays(task=meta["instruction"], agentview=z["agentview"], wrist=z["wrist"],
                         state=z["state"].astype(np.float32), action=z["action"].astype(np.float32)), meta


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("hf-libero", "robosuite", "mujoco", "numpy", "av", "pyarrow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def write_all(plan: dict[str, list[int]], init_ids: list[int], raw_dir: Path, out: Path, overwrite: bool,
              command: str, seed: int, max_steps: int) -> dict:
    """Write one v2.0 dataset folder per suite from the raw episodes, then generation.json + README.md."""
    episodes_meta, datasets = [], []
    for suite, task_ids in plan.items():
        eps = []
        for task_id in task_ids:
            for init_id in init_ids:
                path = raw_path(raw_dir, suite, task_id, init_id)
                if not path.is_file():
                    raise Geo3dError(f"missing rendered episode {path}: run without --from-raw to render it")
                arrays, meta = load_raw(path)
                meta["episode_index"] = len(eps)
                eps.append(arrays)
                episodes_meta.append(meta)
        tasks = [sim.get_task(suite, t).language for t in task_ids]
        folder = write_lerobot_dataset(out / FOLDERS[suite], eps, fps=20, version="v2.0", tasks=tasks,
                                       overwrite=overwrite, progress=True)
        datasets.append(dict(suite=suite, folder=folder.name, episodes=len(eps),
                             frames=int(sum(len(e.action) for e in eps)), bytes=_dir_bytes(folder)))
    gen = dict(command=command, seed=seed, max_steps=max_steps, fps=20, lerobot_version="v2.0",
               image_size=256, orientation=("stored upright: raw render turned 180 degrees once "
                                            "(to_model_images(..., RAW_RENDER)), like the IPEC data"),
               controller=controller_settings(max_steps, seed),
               render_seconds=round(sum(m["render_seconds"] for m in episodes_meta), 1),
               plan={s: t for s, t in plan.items()}, init_state_ids=init_ids, versions=_versions(),
               datasets=datasets, episodes=episodes_meta,
               success=dict(count=sum(m["success"] for m in episodes_meta), episodes=len(episodes_meta)))
    (out / "generation.json").write_text(json.dumps(gen, indent=2) + "\n")
    (out / "README.md").write_text(readme(gen))
    return gen


def missed_phases(meta: dict) -> list[str]:
    """Moving phases that timed out before reaching their waypoint (close/open are timed by design)."""
    return [name for name, _, reached in meta["phases"] if not reached and name not in ("close", "open")]


def readme(gen: dict) -> str:
    """demo_data/README.md, generated from generation.json so the two never disagree."""
    rows = "\n".join(f"| {m['suite']} | {m['task_id']} | {m['instruction']} | {m['init_state_id']} | "
                     f"{m['episode_index']} | {m['length']} | {'yes' if m['success'] else 'no'} | "
                     f"{', '.join(missed_phases(m)) or '-'} |" for m in gen["episodes"])
    sizes = "\n".join(f"- `{d['folder']}/`: {d['episodes']} episodes, {d['frames']} frames, "
                      f"{d['bytes'] / 1e6:.2f} MB" for d in gen["datasets"])
    versions = ", ".join(f"{k} {v}" for k, v in gen["versions"].items())
    c = gen["controller"]
    return f"""# demo_data: the embedded LIBERO demo dataset

Rendered by the real LIBERO simulator (`scripts/make_demo_dataset.py`), stored as two LeRobot **v2.0**
folders laid out like the IPEC-COMMUNITY datasets users download, so `--suite demo` exercises exactly the
reader, precompute and training paths of the real data. Read it with `geo3d.data.mixture.LiberoMixture("demo")`.

{sizes}

Both cameras (`observation.images.image` = agentview, `observation.images.wrist_image`) are 256x256 AV1,
{gen['fps']} fps, stored **upright** like the IPEC data: the raw render turned 180 degrees once
(`geo3d.data.transforms.to_model_images(..., RAW_RENDER)`, openvla's `[::-1, ::-1]`); they reach the models unturned.
`observation.state` = eef xyz, eef axis-angle, 2 gripper finger positions (`geo3d.core.sim.state_from_obs`);
`action` = OSC_POSE delta (xyz, rotation, gripper -1 open / +1 close) in [-1, 1], as sent to the simulator.

## Episodes ({gen['success']['count']} of {gen['success']['episodes']} reported success by the simulator)

| suite | task id | instruction (LIBERO benchmark language) | init state | episode | frames | success | missed |
|---|---|---|---|---|---|---|---|
{rows}

Init state = index into the benchmark's 50 bundled initial states of the task; seed {gen['seed']};
each episode is capped at {gen['max_steps']} steps. "missed" = controller phases that ended on their step
limit without reaching their waypoint (a missed `descend` means the fingers were blocked above the grasp
pose and the gripper closed on nothing; the rest of the motion still runs).

## Controller (scripted, not a learned policy)

Waypoints from the simulator's object poses at the start of the episode: above the object, descend (bowls
by the rim on the side facing the robot, other objects at their centre), close the gripper, lift, move above
the target (plate / basket) keeping the grasp offset, lower, open, retreat. Each step: proportional action
`{c['gain']} * error / {c['pos_scale_m']} m` (robosuite OSC_POSE output_max: 1.0 = {c['pos_scale_m']} m),
capped at {c['max_speed']} ({CARRY_SPEED} while carrying a bowl), rate-limited to {c['max_delta']} per step; rotation 0.
The demo is for exercising the pipeline, not for benchmarking policies.

## Regenerate

    make sim                                          # LIBERO simulator into .venv (scripts/install_sim.sh)
    {gen['command']}

Rendering these {gen['success']['episodes']} episodes took {gen['render_seconds']:.0f} s of episode time
(plus ~10 s per task for creating the environment) on a shared, loaded 2-core CPU without GPU.
Raw per-episode arrays are cached as .npz (`--raw-dir`, reused only when the controller settings match);
`--from-raw` rewrites the folders without re-rendering. Per-episode details (controller phases, render
seconds): `generation.json`. The folder names keep the IPEC `_no_noops_` naming so the suite resolver
treats them like the real data; the scripted controller rarely produces no-op steps (only while the
gripper closes or opens).

Versions: {versions}.
"""


def parse_plan(items: list[str]) -> dict[str, list[int]]:
    """`libero_spatial:0,1` -> {"libero_spatial": [0, 1]}."""
    plan = {}
    for item in items:
        suite, _, ids = item.partition(":")
        if suite not in FOLDERS or not ids:
            raise Geo3dError(f"bad --tasks entry {item!r}: expected SUITE:ID[,ID] with SUITE in {list(FOLDERS)}")
        plan[suite] = [int(i) for i in ids.split(",")]
    return plan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "demo_data")
    ap.add_argument("--raw-dir", type=Path, default=Path("/tmp/geo3d_demo_raw"))
    ap.add_argument("--tasks", nargs="+", default=[f"{s}:{','.join(map(str, t))}" for s, t in DEFAULT_PLAN.items()],
                    help="SUITE:TASK_ID[,TASK_ID] per suite (both demo suites are required)")
    ap.add_argument("--init-states", default="0,1", help="bundled init-state ids rendered per task")
    ap.add_argument("--max-steps", type=int, default=160)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--from-raw", action="store_true", help="write from --raw-dir without rendering")
    ap.add_argument("--render-only", action="store_true", help="render into --raw-dir, write nothing")
    ap.add_argument("--overwrite", action="store_true", help="replace existing dataset folders")
    args = ap.parse_args(argv)
    try:
        plan = parse_plan(args.tasks)
        init_ids = [int(i) for i in args.init_states.split(",")]
        if not args.render_only and set(plan) != set(FOLDERS):
            raise Geo3dError(f"the demo dataset needs both suites {list(FOLDERS)}; got {list(plan)} "
                             "(or pass --render-only to only render)")
        plan = {s: plan[s] for s in FOLDERS if s in plan}
        existing = [args.out / f for f in FOLDERS.values() if (args.out / f).exists()]
        if existing and not (args.overwrite or args.render_only):
            raise Geo3dError(f"{existing[0]} already exists; pass --overwrite to replace the demo dataset "
                             "(or --out to write elsewhere)")
        if not args.from_raw:
            render_all(plan, init_ids, args.raw_dir, args.max_steps, args.seed)
        if args.render_only:
            return 0
        command = (".venv/bin/python scripts/make_demo_dataset.py --tasks " + " ".join(
            f"{s}:{','.join(map(str, t))}" for s, t in plan.items())
            + f" --init-states {args.init_states} --max-steps {args.max_steps} --seed {args.seed} --overwrite")
        gen = write_all(plan, init_ids, args.raw_dir, args.out, args.overwrite, command, args.seed, args.max_steps)
    except Geo3dError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"[demo] wrote {args.out}: " + ", ".join(f"{d['folder']} {d['frames']} frames {d['bytes'] / 1e6:.2f} MB"
                                                   for d in gen["datasets"])
          + f"; success {gen['success']['count']}/{gen['success']['episodes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
