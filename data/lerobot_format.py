"""Read a local LeRobot dataset folder (v2.0, v2.1, v3.0) with pyarrow + PyAV: no lerobot, no network.

lerobot >= 0.4 refuses v2.x and pins torch/numpy/Python versions, while the LIBERO datasets users have
are v2.0, so the reader is our own. Only `meta/` is read at construction; parquet columns and videos
are read on demand, and nothing unpicklable is held (safe to build before DataLoader workers start).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from geo3d.data.dataset_base import EpisodeDataset
from geo3d.data.lerobot_layout import (ACTION_KEY, CAMERA_KEYS, CHUNKS_SIZE, STATE_KEY, SUPPORTED_VERSIONS,
                               V2_DATA_PATH, V2_VIDEO_PATH, V3_DATA_PATH, V3_VIDEO_PATH)
from geo3d.data.video_decode import VideoCache, VideoFile
from geo3d.core.errors import DataError

FIX_HINT = "re-download this dataset folder (or re-create it) and check the path"


@dataclass(frozen=True)
class EpisodeInfo:
    """Where one episode lives: its data file (+ first row there) and per-camera video file + start time."""

    episode_index: int
    length: int
    tasks: tuple[str, ...]
    data_file: str
    video_files: tuple[str, ...]  # CAMERA_KEYS order
    video_from_ts: tuple[float, ...]


def _as_numpy(col: pa.ChunkedArray) -> np.ndarray:
    """A parquet column as numpy; (fixed-size) list columns become [N, D]."""
    arr = col.combine_chunks()
    if pa.types.is_fixed_size_list(arr.type) or pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        flat = arr.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(arr), -1) if len(arr) else flat.reshape(0, 0)
    return arr.to_numpy(zero_copy_only=False)


class LeRobotDataset(EpisodeDataset):
    """One LeRobot dataset folder: metadata at construction, columns and frames on demand."""

    # LIBERO LeRobot frames are stored upright (openvla turned the raw renders 180 degrees when it built the
    # RLDS data; the LeRobot conversions copied them): they reach the models unturned (geo3d.data.transforms).
    FRAME_ORIENTATION = "upright"

    def __init__(self, path: str | Path, table_cache_size: int = 64, video_cache_size: int = 4):
        self.path = Path(path)
        self.info = self._read_info()
        self.codebase_version: str = self.info["codebase_version"]
        self.fps = int(self.info["fps"])
        self.tasks = self._read_tasks()
        self._episodes = self._read_episodes()
        self.episode_indices = sorted(self._episodes)
        self.num_frames = int(sum(e.length for e in self._episodes.values()))
        total = self.info.get("total_frames")
        if total is not None and int(total) != self.num_frames:
            raise DataError(f"{self.path}/meta/info.json says total_frames={total} but the episode metadata "
                            f"adds up to {self.num_frames}; {FIX_HINT}")
        self._tables: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self._table_cache_size = table_cache_size
        self._videos = VideoCache(video_cache_size)

    # ---- metadata (name, num_episodes, episode(i): EpisodeDataset) ---------------------------------
    def identity(self) -> dict[str, Any]:
        """What the features store records to notice that this dataset changed."""
        return {"name": self.name, "codebase_version": self.codebase_version,
                "num_episodes": self.num_episodes, "num_frames": self.num_frames, "fps": self.fps}

    def meta_stats(self) -> dict[str, Any] | None:
        """meta/stats.json as stored, or None when the dataset has none."""
        p = self.path / "meta" / "stats.json"
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"cannot parse {p}: {e}; {FIX_HINT}") from e

    def _read_info(self) -> dict[str, Any]:
        p = self.path / "meta" / "info.json"
        if not p.is_file():
            raise DataError(f"{p} is missing: {self.path} is not a LeRobot dataset folder; {FIX_HINT}")
        try:
            info = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{p} is corrupt (not valid JSON: {e}); {FIX_HINT}") from e
        if not isinstance(info, dict):
            raise DataError(f"{p} is corrupt (expected a JSON object); {FIX_HINT}")
        missing = [k for k in ("codebase_version", "fps", "features") if k not in info]
        if missing:
            raise DataError(f"{p} is corrupt: missing {missing}; {FIX_HINT}")
        if info["codebase_version"] not in SUPPORTED_VERSIONS:
            raise DataError(f"{p}: LeRobot format {info['codebase_version']!r} is not supported "
                            f"(supported: {', '.join(SUPPORTED_VERSIONS)})")
        absent = [k for k in (*CAMERA_KEYS, STATE_KEY, ACTION_KEY) if k not in info["features"]]
        if absent:
            raise DataError(f"{p}: features {absent} are missing; a LIBERO dataset needs both cameras "
                            f"{list(CAMERA_KEYS)}, {STATE_KEY} and {ACTION_KEY}")
        return info

    def _jsonl(self, rel: str) -> list[dict[str, Any]]:
        p = self.path / rel
        if not p.is_file():
            raise DataError(f"{p} is missing; {FIX_HINT}")
        try:
            return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        except ValueError as e:
            raise DataError(f"{p} is corrupt: {e}; {FIX_HINT}") from e

    def _parquet(self, path: Path, columns: list[str] | None = None) -> pa.Table:
        if not path.is_file():
            raise DataError(f"{path} is missing; {FIX_HINT}")
        try:
            if columns is not None:
                names = set(pq.read_schema(path).names)
                absent = [c for c in columns if c not in names]
                if absent:
                    raise DataError(f"{path} lacks columns {absent}; {FIX_HINT}")
            return pq.read_table(path, columns=columns)
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"cannot read {path}: {e}; {FIX_HINT}") from e

    def _read_tasks(self) -> dict[int, str]:
        if self.codebase_version != "v3.0":
            return {int(r["task_index"]): str(r["task"]) for r in self._jsonl("meta/tasks.jsonl")}
        table = self._parquet(self.path / "meta" / "tasks.parquet")
        text_col = "task" if "task" in table.column_names else "__index_level_0__"
        if text_col not in table.column_names or "task_index" not in table.column_names:
            raise DataError(f"{self.path}/meta/tasks.parquet has no task/task_index columns; {FIX_HINT}")
        return dict(zip(table.column("task_index").to_pylist(), map(str, table.column(text_col).to_pylist())))

    def _read_episodes(self) -> dict[int, EpisodeInfo]:
        rows = self._episode_rows_v3() if self.codebase_version == "v3.0" else self._episode_rows_v2()
        if not rows:
            raise DataError(f"{self.path} lists no episodes; {FIX_HINT}")
        empty = [e.episode_index for e in rows if e.length < 1]
        if empty:  # every verb opens the dataset here, so precompute, verify-cache and train all refuse it
            where = "meta/episodes/" if self.codebase_version == "v3.0" else "meta/episodes.jsonl"
            raise DataError(f"{self.path}: episode {empty[0]} has 0 frames ({where} length 0"
                            f"{f'; also episodes {empty[1:]}' if len(empty) > 1 else ''}); an episode needs at least "
                            f"one frame: remove it from the metadata (and its data/video files) or re-create the "
                            f"dataset")
        return {e.episode_index: e for e in rows}

    def _episode_rows_v2(self) -> list[EpisodeInfo]:
        data_t = self.info.get("data_path", V2_DATA_PATH)
        video_t = self.info.get("video_path", V2_VIDEO_PATH)
        chunks = int(self.info.get("chunks_size", CHUNKS_SIZE))
        out = []
        for r in self._jsonl("meta/episodes.jsonl"):
            i, chunk = int(r["episode_index"]), int(r["episode_index"]) // chunks
            out.append(EpisodeInfo(
                i, int(r["length"]), tuple(r.get("tasks", [])),
                data_t.format(episode_chunk=chunk, episode_index=i),
                tuple(video_t.format(episode_chunk=chunk, video_key=k, episode_index=i) for k in CAMERA_KEYS),
                tuple(0.0 for _ in CAMERA_KEYS)))
        return out

    def _episode_rows_v3(self) -> list[EpisodeInfo]:
        files = sorted((self.path / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise DataError(f"{self.path}/meta/episodes/ holds no chunk-*/file-*.parquet; {FIX_HINT}")
        data_t = self.info.get("data_path", V3_DATA_PATH)
        video_t = self.info.get("video_path", V3_VIDEO_PATH)
        cols = ["episode_index", "tasks", "length", "data/chunk_index", "data/file_index"]
        for k in CAMERA_KEYS:
            cols += [f"videos/{k}/chunk_index", f"videos/{k}/file_index", f"videos/{k}/from_timestamp"]
        out = []
        for f in files:
            for r in self._parquet(f, cols).to_pylist():
                out.append(EpisodeInfo(
                    int(r["episode_index"]), int(r["length"]), tuple(r["tasks"] or ()),
                    data_t.format(chunk_index=r["data/chunk_index"], file_index=r["data/file_index"]),
                    tuple(video_t.format(video_key=k, chunk_index=r[f"videos/{k}/chunk_index"],
                                         file_index=r[f"videos/{k}/file_index"]) for k in CAMERA_KEYS),
                    tuple(float(r[f"videos/{k}/from_timestamp"]) for k in CAMERA_KEYS)))
        return out

    # ---- parquet columns --------------------------------------------------------------------------
    COLUMNS = (STATE_KEY, ACTION_KEY, "task_index", "frame_index", "episode_index")

    def _data_file(self, rel: str) -> dict[str, np.ndarray]:
        """A data file's columns as numpy (LRU-cached: small, read once per file)."""
        cached = self._tables.pop(rel, None)
        if cached is None:
            table = self._parquet(self.path / rel, list(self.COLUMNS))
            cached = {c: _as_numpy(table.column(c)) for c in self.COLUMNS}
            if np.any(np.diff(cached["episode_index"]) < 0):
                raise DataError(f"{self.path / rel}: rows are not grouped by episode_index; {FIX_HINT}")
            eps, first, counts = np.unique(cached["episode_index"], return_index=True, return_counts=True)
            cached["_rows"] = {int(e): (int(f), int(n)) for e, f, n in zip(eps, first, counts)}  # type: ignore
        self._tables[rel] = cached
        while len(self._tables) > self._table_cache_size:
            self._tables.popitem(last=False)
        return cached

    def episode_columns(self, episode_index: int) -> dict[str, np.ndarray]:
        """state float32 [L,8], action float32 [L,7], task_index, frame_index for one episode."""
        ep = self.episode(episode_index)
        cols = self._data_file(ep.data_file)
        first, n = cols["_rows"].get(episode_index, (0, 0))  # episodes are contiguous runs of rows
        if n != ep.length:
            raise DataError(f"{self.path / ep.data_file} has {n} rows for episode {episode_index} but "
                            f"the metadata says length {ep.length}; {FIX_HINT}")
        sl = slice(first, first + n)
        return {STATE_KEY: cols[STATE_KEY][sl].astype(np.float32, copy=False),
                ACTION_KEY: cols[ACTION_KEY][sl].astype(np.float32, copy=False),
                "task_index": cols["task_index"][sl], "frame_index": cols["frame_index"][sl]}

    def validate_files(self) -> None:
        """What construction did not read, so precompute, verify-cache and train agree on what a broken dataset
        is: every parquet file (readable, its rows per episode = the metadata's lengths, known task indices) and
        the video frame rate (the first episode's files' headers) against info.json's fps."""
        for e in self.episode_indices:
            cols = self.episode_columns(e)
            unknown = sorted(set(np.unique(cols["task_index"]).tolist()) - set(self.tasks))
            if unknown:
                raise DataError(f"{self.path / self.episode(e).data_file}: episode {e} has task_index {unknown[0]}, "
                                f"which meta/tasks lists not; {FIX_HINT}")
        first = self.episode(self.episode_indices[0])
        for rel in first.video_files:
            self._check_rate(self.path / rel)

    def _check_rate(self, video: Path) -> None:
        """info.json's fps addresses every frame (time = k / fps): a different video rate misreads them all."""
        rate = self._videos.get(video).rate()
        if rate is not None and abs(rate - self.fps) > 0.01 * self.fps:
            raise DataError(f"{self.path}/meta/info.json says fps {self.fps}, but video {video} has {rate:g} "
                            f"frames/s; set \"fps\": {rate:g} in meta/info.json (or re-create the dataset)")

    def data_files(self) -> list[str]:
        """Every data parquet file, in episode order (each listed once)."""
        return list(dict.fromkeys(self._episodes[i].data_file for i in self.episode_indices))

    def read_columns(self, columns: list[str]) -> dict[str, np.ndarray]:
        """Whole columns over all frames (episode order), read straight from parquet; never decodes video."""
        parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
        for rel in self.data_files():
            table = self._parquet(self.path / rel, columns)
            for c in columns:
                parts[c].append(_as_numpy(table.column(c)))
        return {c: np.concatenate(v) for c, v in parts.items()}

    def task_text(self, task_index: int) -> str:
        try:
            return self.tasks[int(task_index)]
        except KeyError:
            raise DataError(f"{self.path}: task_index {task_index} is not in the tasks metadata; {FIX_HINT}") from None

    # ---- video ------------------------------------------------------------------------------------
    def _short_video_error(self, v: int, ep: EpisodeInfo, got: int) -> DataError:
        self._check_rate(self.path / ep.video_files[v])  # a wrong info.json fps reads as a short video: say so
        return DataError(f"video {self.path / ep.video_files[v]} has {got} frames for episode {ep.episode_index} "
                         f"but its parquet has {ep.length} rows; the video is truncated or does not match the "
                         f"data: {FIX_HINT}")

    def iter_episode_frames(self, episode_index: int, threads: int = 0) -> Iterator[np.ndarray]:
        """Decode the episode once, in order: uint8 [V,H,W,3] per frame as stored (V = agentview, wrist).

        threads: decoder threads per camera (0 = automatic); the decoders are freed when this ends.
        """
        ep = self.episode(episode_index)
        files = [VideoFile(self.path / f, threads=threads) for f in ep.video_files]
        streams = [vf.read(ts, self.fps, 0, ep.length) for vf, ts in zip(files, ep.video_from_ts)]
        try:
            for k in range(ep.length):
                frames = []
                for v, it in enumerate(streams):
                    got = next(it, None)
                    if got is None or got[0] != k:
                        raise self._short_video_error(v, ep, k if got is None else got[0])
                    frames.append(got[1])
                yield np.stack(frames)
        finally:
            for it in streams:  # suspended readers hold the decoders: end them, then free the files
                it.close()
            for vf in files:
                vf.close()

    def read_frame(self, episode_index: int, frame_index: int) -> np.ndarray:
        """Random access: uint8 [V,H,W,3] as stored; same pixels as `iter_episode_frames`."""
        ep = self.episode(episode_index)
        frames = []
        for v, (rel, ts) in enumerate(zip(ep.video_files, ep.video_from_ts)):
            vf = self._videos.get(self.path / rel)
            got = list(vf.read(ts, self.fps, frame_index, 1))
            if not got and self.codebase_version != "v3.0" and 0 < vf.num_frames() < ep.length:
                raise self._short_video_error(v, ep, vf.num_frames())  # one episode per file: exact counts
            if not got:
                raise DataError(f"video {self.path / rel} ends before frame {frame_index} of episode "
                                f"{episode_index} (its parquet has {ep.length} rows); {FIX_HINT}")
            frames.append(got[0][1])
        return np.stack(frames)

    def close(self) -> None:
        self._videos.close()
