"""Synthetic LIBERO-shaped LeRobot datasets written with the real writer (importable by every test area)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from geo3d.data.episode_arrays import EpisodeArrays
from geo3d.data.suites import SUITE_FOLDERS
from geo3d.data.lerobot_writer import write_lerobot_dataset


def synthetic_episode(rng: np.random.Generator, task: str, length: int, size: int) -> EpisodeArrays:
    """Smooth random actions, state integrating them, and textured frames that change every step."""
    steps = rng.normal(0, 0.15, (length, 6)).cumsum(0)
    action = np.concatenate([np.tanh(steps), np.where(rng.random((length, 1)) < 0.5, -1.0, 1.0)], 1)
    action[:, 6] = np.where(np.arange(length) < length // 2, -1.0, 1.0)  # gripper: open then close
    pos = np.cumsum(action[:, :6] * 0.01, 0)
    state = np.concatenate([pos, np.stack([0.04 * (action[:, 6] < 0)] * 2, 1)], 1)
    xx = np.arange(size, dtype=np.float32)[None, None, :]  # separable in x and y: cheap at 256x256
    yy = np.arange(size, dtype=np.float32)[None, :, None]
    t = np.arange(length, dtype=np.float32)[:, None, None]
    base = rng.integers(0, 256, 3)
    views = []
    for phase in (0.0, 1.7):
        frames = np.empty((length, size, size, 3), np.uint8)
        for c in range(3):  # smooth moving texture: AV1 keeps it close to the source
            wave = np.sin((xx + 2 * t) / (6 + phase) + c) * np.cos((yy - t) / 7.0 + phase)
            frames[..., c] = np.clip(base[c] * 0.5 + 64 + 50 * wave + 2 * t, 0, 255)
        views.append(frames)
    return EpisodeArrays(task=task, agentview=views[0], wrist=views[1],
                         state=state.astype(np.float32), action=action.astype(np.float32))


def synthetic_sources(suites: Sequence[str] = ("libero_spatial", "libero_object"), episodes_per_suite: int = 2,
                      length: int = 12, size: int = 64, seed: int = 0,
                      lengths: Sequence[int] | None = None) -> dict[str, list[EpisodeArrays]]:
    """The in-memory episodes `make_synthetic_libero` writes (same arguments -> same arrays)."""
    rng = np.random.default_rng(seed)
    out = {}
    for suite in suites:
        out[suite] = [synthetic_episode(rng, f"{suite} task {i % 2}: pick up the object",
                                        lengths[i] if lengths is not None else length, size)
                      for i in range(episodes_per_suite)]
    return out


def make_synthetic_libero(root: Path, suites: Sequence[str] = ("libero_spatial", "libero_object"),
                          episodes_per_suite: int = 2, length: int = 12, size: int = 64,
                          version: str = "v2.0", seed: int = 0, lengths: Sequence[int] | None = None,
                          **writer_kwargs) -> Path:
    """Write one dataset folder per suite under `root` (real folder names) and return `root`.

    lengths: optional per-episode lengths (overrides `length`), to test uneven episodes.
    writer_kwargs go to `write_lerobot_dataset` (e.g. episodes_per_file for v3.0).
    """
    root = Path(root)
    sources = synthetic_sources(suites, episodes_per_suite, length, size, seed, lengths)
    for suite, eps in sources.items():
        write_lerobot_dataset(root / SUITE_FOLDERS[suite], eps, version=version, **writer_kwargs)
    return root
