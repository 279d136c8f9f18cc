"""Write a real LeRobot dataset folder (v2.0, v2.1 or v3.0) from in-memory episodes.

Used to store the demo dataset rendered by the LIBERO simulator and to make test fixtures, so every
reader path is exercised on the same files a user downloads. The folder is built beside `root` and
moved into place at the end: an error never leaves a half-written dataset under the real name.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from geo3d.core.errors import DataError
from geo3d.data.episode_arrays import EpisodeArrays
from geo3d.data.lerobot_layout import (
    ACTION_DIM,
    ACTION_KEY,
    AGENTVIEW_KEY,
    CAMERA_KEYS,
    CHUNKS_SIZE,
    STATE_DIM,
    STATE_KEY,
    SUPPORTED_VERSIONS,
    V2_DATA_PATH,
    V2_VIDEO_PATH,
    V3_DATA_PATH,
    V3_EPISODES_PATH,
    V3_TASKS_PATH,
    V3_VIDEO_PATH,
    WRIST_KEY,
    huggingface_schema_metadata,
    libero_features,
)
from geo3d.data.meta_stats import columns_stats, image_stats
from geo3d.data.video_decode import encode_av1

__all__ = ["EpisodeArrays", "write_lerobot_dataset"]


def write_lerobot_dataset(root: Path, episodes: Sequence[EpisodeArrays], fps: int = 20, version: str = "v2.0",
                          tasks: Sequence[str] | None = None, robot_type: str = "panda",
                          overwrite: bool = False, episodes_per_file: int | None = None,
                          crf: int = 30, gop: int = 2, preset: int = 8, progress: bool = False) -> Path:
    """Write `episodes` as a LeRobot `version` dataset at `root` and return `root`.

    tasks: task strings in task_index order (default: order of first appearance in `episodes`).
    episodes_per_file: v3.0 only, how many episodes share one parquet/mp4 file (default: all).
    """
    root = Path(root)
    if version not in SUPPORTED_VERSIONS:
        raise DataError(f"unknown LeRobot version {version!r}; choose one of {SUPPORTED_VERSIONS}")
    if not episodes:
        raise DataError("no episodes to write")
    for ep in episodes:
        ep.validate()
    shapes = {ep.agentview.shape[1:] for ep in episodes}
    if len(shapes) != 1:
        raise DataError(f"all episodes must share one image size, got {sorted(shapes)}")
    task_list = _task_list(episodes, tasks)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise DataError(f"{root} already exists and is not empty; pass overwrite=True or choose another path")
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        writer = _write_v3 if version == "v3.0" else _write_v2
        writer(tmp, list(episodes), task_list, fps, version, robot_type, episodes_per_file,
               dict(crf=crf, gop=gop, preset=preset), progress)
        if root.exists():
            shutil.rmtree(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _task_list(episodes: Sequence[EpisodeArrays], tasks: Sequence[str] | None) -> list[str]:
    if tasks is None:
        return list(dict.fromkeys(ep.task for ep in episodes))
    missing = sorted({ep.task for ep in episodes} - set(tasks))
    if missing:
        raise DataError(f"episode tasks not in the given task list: {missing}")
    return list(tasks)


def _frame_table(episodes: list[tuple[int, EpisodeArrays, int]], task_list: list[str], fps: int,
                 features: dict[str, Any]) -> pa.Table:
    """Rows of (episode_index, arrays, first global index) as lerobot's per-frame parquet columns."""
    cols: dict[str, list] = {k: [] for k in ("state", "action", "frame", "episode", "index", "task")}
    for ep_idx, ep, start in episodes:
        n = len(ep)
        cols["state"].append(np.asarray(ep.state, np.float32).reshape(-1))
        cols["action"].append(np.asarray(ep.action, np.float32).reshape(-1))
        cols["frame"].append(np.arange(n, dtype=np.int64))
        cols["episode"].append(np.full(n, ep_idx, np.int64))
        cols["index"].append(np.arange(start, start + n, dtype=np.int64))
        cols["task"].append(np.full(n, task_list.index(ep.task), np.int64))
    cat = {k: np.concatenate(v) for k, v in cols.items()}
    fixed = lambda flat, d: pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), d)  # noqa: E731
    table = pa.table({
        STATE_KEY: fixed(cat["state"], STATE_DIM),
        ACTION_KEY: fixed(cat["action"], ACTION_DIM),
        "timestamp": pa.array((cat["frame"] / fps).astype(np.float32)),
        "frame_index": pa.array(cat["frame"]),
        "episode_index": pa.array(cat["episode"]),
        "index": pa.array(cat["index"]),
        "task_index": pa.array(cat["task"]),
    })
    meta = {b"huggingface": json.dumps(huggingface_schema_metadata(features)).encode()}
    return table.replace_schema_metadata(meta)


def _numeric_columns(table: pa.Table) -> dict[str, np.ndarray]:
    out = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(col.type):
            out[name] = col.flatten().to_numpy().reshape(len(col), col.type.list_size)
        else:
            out[name] = col.to_numpy()
    return out


def _dataset_stats(table: pa.Table, episodes: list[EpisodeArrays], quantiles: bool) -> dict[str, Any]:
    stats = columns_stats(_numeric_columns(table), quantiles)
    for key, attr in ((AGENTVIEW_KEY, "agentview"), (WRIST_KEY, "wrist")):
        stats[key] = image_stats(getattr(ep, attr) for ep in episodes)
    if not quantiles:  # v2.x stats.json holds min/max/mean/std only
        stats = {k: {s: v[s] for s in ("min", "max", "mean", "std")} for k, v in stats.items()}
    return stats


def _info(episodes: list[EpisodeArrays], task_list: list[str], fps: int, version: str,
          robot_type: str, features: dict[str, Any], n_chunks: int) -> dict[str, Any]:
    n_eps, n_frames = len(episodes), sum(len(ep) for ep in episodes)
    info: dict[str, Any] = {
        "codebase_version": version, "robot_type": robot_type, "total_episodes": n_eps,
        "total_frames": n_frames, "total_tasks": len(task_list),
    }
    if version == "v3.0":
        info.update({"chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": 100, "video_files_size_in_mb": 500,
                     "fps": fps, "splits": {"train": f"0:{n_eps}"}, "data_path": V3_DATA_PATH,
                     "video_path": V3_VIDEO_PATH})
    else:
        info.update({"total_videos": n_eps * len(CAMERA_KEYS), "total_chunks": n_chunks,
                     "chunks_size": CHUNKS_SIZE, "fps": fps, "splits": {"train": f"0:{n_eps}"},
                     "data_path": V2_DATA_PATH, "video_path": V2_VIDEO_PATH})
    info["features"] = features
    return info


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=4))


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _progress(items: list, enabled: bool, desc: str):
    if not enabled:
        return items

    return tqdm(items, desc=desc, unit="episode")


def _write_v2(root: Path, episodes: list[EpisodeArrays], task_list: list[str], fps: int, version: str,
              robot_type: str, episodes_per_file: int | None, enc: dict[str, int], progress: bool) -> None:
    """v2.0/v2.1: one parquet and one mp4 per camera per episode; meta as JSON lines."""
    if episodes_per_file is not None:
        raise DataError("episodes_per_file applies to v3.0 only (v2.x stores one episode per file)")
    h, w = episodes[0].agentview.shape[1:3]
    features = libero_features(h, w, fps)
    tables, start, ep_stats = [], 0, []
    for i, ep in enumerate(_progress(episodes, progress, f"writing {root.name.split('.tmp')[0]}")):
        chunk = i // CHUNKS_SIZE
        table = _frame_table([(i, ep, start)], task_list, fps, features)
        path = root / V2_DATA_PATH.format(episode_chunk=chunk, episode_index=i)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        for key, frames in ((AGENTVIEW_KEY, ep.agentview), (WRIST_KEY, ep.wrist)):
            encode_av1(root / V2_VIDEO_PATH.format(episode_chunk=chunk, video_key=key, episode_index=i),
                       [frames], fps, **enc)
        if version == "v2.1":
            st = columns_stats(_numeric_columns(table), quantiles=False)
            st[AGENTVIEW_KEY], st[WRIST_KEY] = image_stats([ep.agentview]), image_stats([ep.wrist])
            ep_stats.append({"episode_index": i, "stats": st})
        tables.append(table)
        start += len(ep)
    n_chunks = (len(episodes) - 1) // CHUNKS_SIZE + 1
    _write_json(root / "meta/info.json", _info(episodes, task_list, fps, version, robot_type, features, n_chunks))
    _write_jsonl(root / "meta/episodes.jsonl",
                 [{"episode_index": i, "tasks": [ep.task], "length": len(ep)} for i, ep in enumerate(episodes)])
    _write_jsonl(root / "meta/tasks.jsonl", [{"task_index": j, "task": t} for j, t in enumerate(task_list)])
    _write_json(root / "meta/stats.json", _dataset_stats(pa.concat_tables(tables), episodes, quantiles=False))
    if version == "v2.1":
        _write_jsonl(root / "meta/episodes_stats.jsonl", ep_stats)


def _tasks_table(task_list: list[str]) -> pa.Table:
    """meta/tasks.parquet as lerobot v3.0 writes it with pandas: the task string is the index."""
    table = pa.table({"task_index": pa.array(range(len(task_list)), pa.int64()), "task": pa.array(task_list)})
    pandas_meta = {
        "index_columns": ["task"], "column_indexes": [], "pandas_version": "2.2.3", "creator": {
            "library": "pyarrow", "version": pa.__version__},
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                     "numpy_type": "int64", "metadata": None},
                    {"name": "task", "field_name": "task", "pandas_type": "unicode",
                     "numpy_type": "object", "metadata": None}],
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def _write_v3(root: Path, episodes: list[EpisodeArrays], task_list: list[str], fps: int, version: str,
              robot_type: str, episodes_per_file: int | None, enc: dict[str, int], progress: bool) -> None:
    """v3.0: many episodes per data parquet and per camera mp4; per-episode rows in meta/episodes."""
    h, w = episodes[0].agentview.shape[1:3]
    features = libero_features(h, w, fps)
    per_file = episodes_per_file or len(episodes)
    groups = [list(range(s, min(s + per_file, len(episodes)))) for s in range(0, len(episodes), per_file)]
    rows, tables, start = [], [], 0
    for f, group in enumerate(_progress(groups, progress, f"writing {root.name.split('.tmp')[0]}")):
        chunk, file = divmod(f, CHUNKS_SIZE)
        starts = list(np.cumsum([start] + [len(episodes[i]) for i in group])[:-1])
        table = _frame_table([(i, episodes[i], int(s)) for i, s in zip(group, starts)], task_list, fps, features)
        path = root / V3_DATA_PATH.format(chunk_index=chunk, file_index=file)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        spans = {}
        for key, attr in ((AGENTVIEW_KEY, "agentview"), (WRIST_KEY, "wrist")):
            spans[key] = encode_av1(root / V3_VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file),
                                    [getattr(episodes[i], attr) for i in group], fps, **enc)
        for j, (i, s) in enumerate(zip(group, starts)):
            ep = episodes[i]
            row: dict[str, Any] = {"episode_index": i, "tasks": [ep.task], "length": len(ep),
                                   "data/chunk_index": chunk, "data/file_index": file,
                                   "dataset_from_index": int(s), "dataset_to_index": int(s) + len(ep)}
            for key in CAMERA_KEYS:
                row.update({f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": file,
                            f"videos/{key}/from_timestamp": spans[key][j][0],
                            f"videos/{key}/to_timestamp": spans[key][j][1]})
            row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
            for key, arr in ((STATE_KEY, ep.state), (ACTION_KEY, ep.action)):
                for stat, val in columns_stats({key: arr})[key].items():
                    row[f"stats/{key}/{stat}"] = val
            rows.append(row)
        tables.append(table)
        start += sum(len(episodes[i]) for i in group)
    ep_path = root / V3_EPISODES_PATH.format(chunk_index=0, file_index=0)
    ep_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), ep_path)
    pq.write_table(_tasks_table(task_list), root / V3_TASKS_PATH)
    _write_json(root / "meta/info.json", _info(episodes, task_list, fps, version, robot_type, features, 1))
    _write_json(root / "meta/stats.json", _dataset_stats(pa.concat_tables(tables), episodes, quantiles=True))
