"""LIBERO-layout HDF5 files written with h5py: a copy of any LeRobot LIBERO root, and single task files.

The copy holds exactly the pixels, states and actions the LeRobot reader returns, with every image turned
back into a raw simulator render (180 degrees, as LIBERO's own HDF5 release stores them), so a test can show
that both formats reach the models identically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from geo3d.data.layout import ACTION_KEY, STATE_KEY
from geo3d.data.lerobot_format import LeRobotDataset
from geo3d.data.suites import SUITE_FOLDERS


def write_task_file(path: Path, instruction: str, demos: Sequence[dict], state_layout: str = "ee_states") -> Path:
    """One `<task>_demo.hdf5`: demos = [{"agentview", "wrist" (raw renders), "state" [T,8], "action" [T,7]}].

    state_layout: "ee_states" ([T,6] eef pos + axis-angle) or "ee_pos_ori" (ee_pos [T,3] + ee_ori [T,3]).
    """
    with h5py.File(path, "w") as h:
        data = h.create_group("data")
        data.attrs["problem_info"] = json.dumps({"problem_name": "libero_tabletop_manipulation",
                                                 "domain_name": "kitchen_table", "language_instruction": instruction})
        data.attrs["env_args"] = json.dumps({"env_name": "Libero_Tabletop_Manipulation", "type": 1})
        data.attrs["total"] = int(sum(len(d["action"]) for d in demos))
        for i, d in enumerate(demos):
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = len(d["action"])
            g.create_dataset("actions", data=np.asarray(d["action"], np.float64))
            g.create_dataset("dones", data=np.zeros(len(d["action"]), np.uint8))
            obs = g.create_group("obs")
            obs.create_dataset("agentview_rgb", data=d["agentview"], chunks=(1, *d["agentview"].shape[1:]))
            obs.create_dataset("eye_in_hand_rgb", data=d["wrist"], chunks=(1, *d["wrist"].shape[1:]))
            state = np.asarray(d["state"], np.float64)
            if state_layout == "ee_states":
                obs.create_dataset("ee_states", data=state[:, :6])
            else:
                obs.create_dataset("ee_pos", data=state[:, :3])
                obs.create_dataset("ee_ori", data=state[:, 3:6])
            obs.create_dataset("gripper_states", data=state[:, 6:8])
            obs.create_dataset("joint_states", data=np.zeros((len(state), 7)))
    return path


def file_name(instruction: str) -> str:
    """LIBERO's naming: the task name (instruction words joined by '_') + '_demo.hdf5'."""
    return "_".join(instruction.split()) + "_demo.hdf5"


def hdf5_copy(lerobot_root: Path, out_root: Path, suites: Sequence[str] = ("libero_spatial", "libero_object"),
              folder: str = "{suite}_no_noops", state_layout: str = "ee_states") -> Path:
    """A LIBERO HDF5 copy of the LeRobot suite folders under `lerobot_root`: one file per task, demos in episode
    order, images turned back to raw renders. Refuses a source whose episode order the file names would change."""
    for suite in suites:
        ds = LeRobotDataset(Path(lerobot_root) / SUITE_FOLDERS[suite])
        by_task: dict[str, list[dict]] = {}
        order = []
        for e in ds.episode_indices:
            cols = ds.episode_columns(e)
            frames = np.stack(list(ds.iter_episode_frames(e)))  # [T,V,H,W,3] upright, as stored
            raw = np.ascontiguousarray(frames[:, :, ::-1, ::-1])
            text = ds.task_text(cols["task_index"][0])
            order.append(text)
            by_task.setdefault(text, []).append({"agentview": raw[:, 0], "wrist": raw[:, 1],
                                                 "state": cols[STATE_KEY], "action": cols[ACTION_KEY]})
        names = [file_name(t) for t in dict.fromkeys(order)]
        if names != sorted(names) or len(by_task) != len(dict.fromkeys(order)) or \
                [t for t in order] != [t for t in by_task for _ in by_task[t]]:
            raise ValueError(f"{ds.path}: task files in name order would reorder its episodes")
        dest = Path(out_root) / folder.format(suite=suite)
        dest.mkdir(parents=True, exist_ok=True)
        for text, demos in by_task.items():
            write_task_file(dest / file_name(text), text, demos, state_layout)
        ds.close()
    return Path(out_root)
