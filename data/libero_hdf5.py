"""Read LIBERO's own HDF5 release (or openvla's regenerated `*_no_noops` set) with h5py.

One suite folder holds one `<task name>_demo.hdf5` per task; each file has `data/demo_<i>/` groups with
`obs/agentview_rgb`, `obs/eye_in_hand_rgb` (raw simulator renders: upside down), `actions` [T,7], and the
state parts `obs/ee_states` [T,6] (or `obs/ee_pos` + `obs/ee_ori`) and `obs/gripper_states` [T,2]. The
instruction is `language_instruction` in the JSON of `data.attrs["problem_info"]`.

The class offers the same interface as `LeRobotDataset`, so `LiberoMixture` (and every verb on top of it)
reads either format. Episode order (the stable global index): files in name order, then demos by their
numeric index (demo_9 before demo_10). Construction reads only HDF5 headers and validates every demo, so a
broken file is reported before any work starts. h5py handles are opened lazily in the reading process and
never survive a fork (a handle shared across fork corrupts HDF5's state); pickling carries only paths.
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from geo3d.data.dataset_base import EpisodeDataset
from geo3d.data.lerobot_layout import ACTION_DIM, ACTION_KEY, STATE_KEY
from geo3d.core.errors import DataError

FORMAT = "libero_hdf5"
FILE_GLOB = "*_demo.hdf5"
CAMERAS = ("obs/agentview_rgb", "obs/eye_in_hand_rgb")  # V order everywhere: agentview, wrist
FPS = 20  # LIBERO's control frequency (the HDF5 files do not record it)
READ_BLOCK = 32  # frames per h5py read when decoding an episode sequentially
FIX_HINT = "re-download (or regenerate) this HDF5 file and check the path"


@dataclass(frozen=True)
class H5Episode:
    """Where one episode lives: file (index into the sorted file list), demo group name, length, task."""

    episode_index: int
    file_id: int
    demo: str
    length: int
    state_keys: tuple[str, ...]  # ("obs/ee_states",) or ("obs/ee_pos", "obs/ee_ori"), then gripper_states


def _demo_number(name: str) -> int:
    m = re.fullmatch(r"demo_(\d+)", name)
    return int(m.group(1)) if m else -1


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as e:  # a core dependency, but say what to do if an environment lacks it
        raise DataError(f"reading LIBERO HDF5 files needs h5py ({e}): pip install h5py") from e
    return h5py


def is_hdf5_suite_folder(path: Path) -> bool:
    """A folder of LIBERO `*_demo.hdf5` task files."""
    return path.is_dir() and any(path.glob(FILE_GLOB))


class LiberoHDF5Dataset(EpisodeDataset):
    """One LIBERO suite folder of HDF5 task files: headers at construction, arrays on demand."""

    FRAME_ORIENTATION = "raw_render"  # upside-down simulator renders: the image path turns them once
    codebase_version = FORMAT
    fps = FPS

    def __init__(self, path: str | Path, table_cache_size: int = 64, video_cache_size: int = 4):
        """table_cache_size: episodes whose state/action columns stay cached; video_cache_size: unused (the
        LeRobot reader's knob, accepted so `open_dataset` passes the same arguments to either reader)."""
        self.path = Path(path)
        self.files = sorted(self.path.glob(FILE_GLOB), key=lambda p: p.name)
        if not self.files:
            raise DataError(f"{self.path} holds no {FILE_GLOB} files: not a LIBERO HDF5 suite folder; {FIX_HINT}")
        self.tasks: dict[int, str] = {}
        self._episodes: dict[int, H5Episode] = {}
        for file_id, f in enumerate(self.files):
            self._scan_file(file_id, f)
        self.episode_indices = sorted(self._episodes)
        self.num_frames = int(sum(e.length for e in self._episodes.values()))
        self._cols: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._cache_size = table_cache_size
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()

    # ---- metadata (name, num_episodes, episode(i): EpisodeDataset) ---------------------------------
    def where(self, episode_index: int) -> str:
        """`file.hdf5 demo_<i>` of an episode, for error messages."""
        ep = self.episode(episode_index)
        return f"{self.files[ep.file_id]} {ep.demo}"

    def identity(self) -> dict[str, Any]:
        """What the features store records to notice that this dataset changed."""
        return {"name": self.name, "codebase_version": FORMAT, "num_episodes": self.num_episodes,
                "num_frames": self.num_frames, "fps": self.fps, "files": [f.name for f in self.files]}

    def meta_stats(self) -> None:
        """The HDF5 release ships no stats (the exact ones are computed by geo3d.data.norm_stats)."""
        return None

    def task_text(self, task_index: int) -> str:
        try:
            return self.tasks[int(task_index)]
        except KeyError:
            raise DataError(f"{self.path}: no task {task_index}") from None

    def _scan_file(self, file_id: int, f: Path) -> None:
        """Instruction + every demo's length, checked against its arrays' shapes (headers only)."""
        h5py = _h5py()
        try:
            with h5py.File(f, "r") as h:
                if "data" not in h:
                    raise DataError(f"{f} has no 'data' group: not a LIBERO demo file; {FIX_HINT}")
                self.tasks[file_id] = self._instruction(f, h["data"])
                demos = sorted((k for k in h["data"].keys() if _demo_number(k) >= 0), key=_demo_number)
                if not demos:
                    raise DataError(f"{f} holds no data/demo_<i> groups; {FIX_HINT}")
                for demo in demos:
                    length, keys = self._check_demo(f, demo, h["data"][demo])
                    i = len(self._episodes)
                    self._episodes[i] = H5Episode(i, file_id, demo, length, keys)
        except OSError as e:  # truncated / not HDF5 / unreadable
            raise DataError(f"cannot read {f}: {e} (truncated or not an HDF5 file?); {FIX_HINT}") from e

    @staticmethod
    def _instruction(f: Path, data: Any) -> str:
        raw = data.attrs.get("problem_info")
        if raw is None:
            raise DataError(f"{f}: data.attrs['problem_info'] is missing (it holds the instruction); {FIX_HINT}")
        try:
            text = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))["language_instruction"]
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{f}: data.attrs['problem_info'] is not JSON with 'language_instruction' ({e}); "
                            f"{FIX_HINT}") from e
        text = " ".join(text) if isinstance(text, list) else str(text)
        if not text.strip():
            raise DataError(f"{f}: the language_instruction in problem_info is empty; {FIX_HINT}")
        return text.strip()

    @staticmethod
    def _check_demo(f: Path, demo: str, g: Any) -> tuple[int, tuple[str, ...]]:
        where = f"{f} data/{demo}"
        state = ("obs/ee_states",) if "obs/ee_states" in g else ("obs/ee_pos", "obs/ee_ori")
        need = ("actions", *CAMERAS, *state, "obs/gripper_states")
        missing = [k for k in need if k not in g]
        if missing:
            raise DataError(f"{where} lacks {missing} (a LIBERO demo needs actions, both cameras and "
                            f"obs/ee_states or obs/ee_pos+ee_ori, and obs/gripper_states); {FIX_HINT}")
        n = int(g["actions"].shape[0])
        if n < 1:
            raise DataError(f"{where} (episode {_demo_number(demo)}) has 0 frames; an episode needs at least one: "
                            f"remove the demo or re-create the file; {FIX_HINT}")
        if g["actions"].shape[1:] != (ACTION_DIM,):
            raise DataError(f"{where}/actions has shape {g['actions'].shape}, expected [T>=1,{ACTION_DIM}]; {FIX_HINT}")
        cam_shape = g[CAMERAS[0]].shape
        for k in CAMERAS:
            s = g[k].shape
            if s[0] != n:
                raise DataError(f"{where}/{k} has {s[0]} images but actions has {n} steps; {FIX_HINT}")
            if len(s) != 4 or s[-1] != 3 or s != cam_shape or g[k].dtype != np.uint8:
                raise DataError(f"{where}/{k} is {g[k].dtype} {s}, expected uint8 [T,H,W,3] like {CAMERAS[0]}")
        widths = {"obs/ee_states": 6, "obs/ee_pos": 3, "obs/ee_ori": 3, "obs/gripper_states": 2}
        for k in (*state, "obs/gripper_states"):
            s = g[k].shape
            if len(s) != 2 or s != (n, widths[k]):
                raise DataError(f"{where}/{k} has shape {s}, expected [{n},{widths[k]}]; {FIX_HINT}")
        return n, (*state, "obs/gripper_states")

    # ---- lazy per-process handles ---------------------------------------------------------------
    def _file(self, file_id: int) -> Any:
        if self._pid != os.getpid():  # forked: the parent's handles are not ours to use (or close)
            self._handles, self._pid = {}, os.getpid()
        h = self._handles.get(file_id)
        if h is None:
            try:
                h = self._handles[file_id] = _h5py().File(self.files[file_id], "r")
            except OSError as e:
                raise DataError(f"cannot open {self.files[file_id]}: {e}; {FIX_HINT}") from e
        return h

    def _read(self, episode_index: int, key: str, sl: Any = slice(None)) -> np.ndarray:
        ep = self.episode(episode_index)
        try:
            return np.asarray(self._file(ep.file_id)["data"][ep.demo][key][sl])
        except (OSError, KeyError) as e:
            raise DataError(f"cannot read {key} of {self.where(episode_index)}: {e} (truncated or corrupt "
                            f"file?); {FIX_HINT}") from e

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"], state["_cols"] = {}, OrderedDict()
        return state

    def close(self) -> None:
        for h in self._handles.values():
            h.close()
        self._handles = {}

    # ---- columns --------------------------------------------------------------------------------
    def _state(self, episode_index: int) -> np.ndarray:
        """The LeRobot 8-d state: eef xyz, eef axis-angle, 2 gripper finger positions (float32).

        LIBERO's `ee_states` (and `ee_ori`) hold robosuite's eef quaternion as axis-angle already, which is
        what openvla's RLDS conversion (and from it the LeRobot copies) concatenated with `gripper_states`."""
        parts = [self._read(episode_index, k) for k in self.episode(episode_index).state_keys]
        return np.concatenate(parts, axis=1).astype(np.float32)  # [L, 8]: widths checked at scan

    def episode_columns(self, episode_index: int) -> dict[str, np.ndarray]:
        """state float32 [L,8], action float32 [L,7], task_index, frame_index for one episode (LRU-cached)."""
        cols = self._cols.pop(episode_index, None)
        if cols is None:
            ep = self.episode(episode_index)
            cols = {STATE_KEY: self._state(episode_index),
                    ACTION_KEY: self._read(episode_index, "actions").astype(np.float32),
                    "task_index": np.full(ep.length, ep.file_id, np.int64),
                    "frame_index": np.arange(ep.length, dtype=np.int64)}
        self._cols[episode_index] = cols
        while len(self._cols) > self._cache_size:
            self._cols.popitem(last=False)
        return cols

    def validate_files(self) -> None:
        """What construction did not read: every episode's low-dim arrays (the images were checked by shape)."""
        for e in self.episode_indices:
            self.episode_columns(e)

    def read_columns(self, columns: list[str]) -> dict[str, np.ndarray]:
        """Whole columns over all frames in episode order (never reads images)."""
        out = {c: [] for c in columns}
        for e in self.episode_indices:
            cols = self.episode_columns(e)
            for c in columns:
                out[c].append(cols[c])
        return {c: np.concatenate(v) for c, v in out.items()}

    # ---- frames ---------------------------------------------------------------------------------
    def iter_episode_frames(self, episode_index: int, threads: int = 0) -> Iterator[np.ndarray]:
        """The episode in order, read in blocks: uint8 [V,H,W,3] per frame as stored (raw renders).

        threads: accepted for interface parity with the video reader (HDF5 reads need no decoder threads).
        """
        n = self.episode(episode_index).length
        for lo in range(0, n, READ_BLOCK):
            sl = slice(lo, min(n, lo + READ_BLOCK))
            block = np.stack([self._read(episode_index, k, sl) for k in CAMERAS], axis=1)
            yield from block

    def read_frame(self, episode_index: int, frame_index: int) -> np.ndarray:
        """Random access: uint8 [V,H,W,3] as stored; the same pixels as `iter_episode_frames`."""
        n = self.episode(episode_index).length
        if not 0 <= frame_index < n:
            raise DataError(f"{self.where(episode_index)} has {n} frames, no frame {frame_index}")
        return np.stack([self._read(episode_index, k, frame_index) for k in CAMERAS])
