"""Copies of the shipped demo dataset (real LeRobot v2.0 files: parquet + AV1 mp4) damaged the way users' data
gets damaged, for the reliability tests (issue 25): each helper changes exactly one thing."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from geo3d.data.suites import DEMO_DATA_ROOT

SPATIAL = "libero_spatial_no_noops_1.0.0_lerobot"


def copy_demo(dst: Path) -> Path:
    """A private copy of demo_data/ (both suites, ~9 MB) a test may damage; returns the data root."""
    return Path(shutil.copytree(DEMO_DATA_ROOT, dst, ignore=shutil.ignore_patterns("*.md")))


def parquet_path(root: Path, episode: int, suite: str = SPATIAL) -> Path:
    return root / suite / f"data/chunk-000/episode_{episode:06d}.parquet"


def video_path(root: Path, episode: int, camera: str = "observation.images.image", suite: str = SPATIAL) -> Path:
    return root / suite / f"videos/chunk-000/{camera}/episode_{episode:06d}.mp4"


def set_task_index(root: Path, episode: int, value: int, suite: str = SPATIAL) -> None:
    """Every row of the episode's parquet gets `task_index = value` (e.g. one meta/tasks.jsonl lacks)."""
    path = parquet_path(root, episode, suite)
    table = pq.read_table(path)
    column = pa.array([value] * table.num_rows, type=table.schema.field("task_index").type)
    pq.write_table(table.set_column(table.schema.get_field_index("task_index"), "task_index", column), path)


def empty_episode(root: Path, episode: int, suite: str = SPATIAL) -> None:
    """The episode as a conversion of an empty recording writes it: length 0 in the metadata, a 0-row parquet."""
    meta = root / suite / "meta"
    rows = [json.loads(line) for line in (meta / "episodes.jsonl").read_text().splitlines()]
    removed = next(r["length"] for r in rows if r["episode_index"] == episode)
    for r in rows:
        if r["episode_index"] == episode:
            r["length"] = 0
    (meta / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = json.loads((meta / "info.json").read_text())
    info["total_frames"] -= removed
    (meta / "info.json").write_text(json.dumps(info, indent=4))
    path = parquet_path(root, episode, suite)
    pq.write_table(pq.read_table(path).slice(0, 0), path)


def set_info_fps(root: Path, fps: int, suite: str = SPATIAL) -> None:
    info_path = root / suite / "meta/info.json"
    info = json.loads(info_path.read_text())
    info["fps"] = fps
    info_path.write_text(json.dumps(info, indent=4))


def truncate(path: Path, fraction: float = 0.5) -> None:
    """Cut a file short, as an interrupted copy or download leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path -> sha256): equal snapshots = nothing was changed."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}
