"""A suite mixture with one stable global frame index that stage 1 and stage 2 both agree on.

Order: dataset (suite order) -> episode (sorted episode_index) -> frame. Global index i therefore names
the same frame in the features store (written by precompute) and in training batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from geo3d.core.config import DATA_YAML, data_default, data_root_from
from geo3d.data.dataset_base import frame_content_id
from geo3d.data.lerobot_layout import ACTION_KEY, STATE_KEY
from geo3d.data.suites import open_dataset, resolve_suite
from geo3d.data.transforms import to_model_images


@dataclass(frozen=True)
class EpisodeSpan:
    """An episode's place in the global index: frames start .. start+length-1."""

    dataset_id: int
    episode_index: int
    start: int
    length: int


class LiberoMixture:
    """LIBERO suite(s) as one indexable dataset (map-style, DataLoader-safe, lazy I/O)."""

    def __init__(self, suite: str, data_root: str | Path | None = None, action_horizon: int | None = None,
                 image_size: int | None | str = DATA_YAML, video_cache_size: int = 4):
        """action_horizon and image_size default to configs/data.yaml's (their one source); image_size=None
        keeps frames at their stored size."""
        self.suite = suite
        self.action_horizon = int(action_horizon if action_horizon is not None else data_default("action_horizon"))
        self.image_size = data_default("image_size") if image_size == DATA_YAML else image_size
        self.paths = resolve_suite(suite, data_root)
        self.datasets = [open_dataset(p, video_cache_size=video_cache_size) for p in self.paths]
        spans, start = [], 0
        for d, ds in enumerate(self.datasets):
            for e in ds.episode_indices:
                n = ds.episode(e).length
                spans.append(EpisodeSpan(d, e, start, n))
                start += n
        self._spans = spans
        self._span_of = {(s.dataset_id, s.episode_index): s for s in spans}
        lengths = np.array([s.length for s in spans], dtype=np.int64)
        self.dataset_id = np.repeat(np.array([s.dataset_id for s in spans], np.int64), lengths)
        self.episode_index = np.repeat(np.array([s.episode_index for s in spans], np.int64), lengths)
        starts = np.repeat(np.array([s.start for s in spans], np.int64), lengths)
        self.frame_index = np.arange(start, dtype=np.int64) - starts

    @classmethod
    def from_config(cls, cfg: Any, **kwargs: Any) -> "LiberoMixture":
        """Build from the `data.*` config keys (data root: config, then $GEO3D_DATA_ROOT)."""
        d = cfg.data
        return cls(d.suite, data_root_from(cfg), action_horizon=d.action_horizon, image_size=d.image_size,
                   **kwargs)

    def __len__(self) -> int:
        return len(self.frame_index)

    def validate_files(self) -> "LiberoMixture":
        """Read what opening the mixture did not (every parquet file's columns, the video frame rate): the one
        dataset check `geo3d precompute`, `verify-cache` and `train` run before their work (DataError, exit 2)."""
        for ds in self.datasets:
            ds.validate_files()
        return self

    def locate(self, i: int) -> tuple[int, int, int]:
        """Global index -> (dataset_id, episode_index, frame_index)."""
        i = self._check(i)
        return int(self.dataset_id[i]), int(self.episode_index[i]), int(self.frame_index[i])

    def global_index(self, dataset_id: int, episode_index: int, frame_index: int = 0) -> int:
        return self.span(dataset_id, episode_index).start + int(frame_index)

    def episodes(self) -> list[EpisodeSpan]:
        return list(self._spans)

    def span(self, dataset_id: int, episode_index: int) -> EpisodeSpan:
        return self._span_of[(int(dataset_id), int(episode_index))]

    def identity(self) -> dict[str, Any]:
        """JSON-serialisable identity of the data behind the index (the features store compares it)."""
        return {"suite": self.suite, "datasets": [ds.identity() for ds in self.datasets],
                "num_frames": len(self)}

    def _check(self, i: int) -> int:
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"global frame index {i} out of range for {n} frames")
        return i

    # ---- sequential (stage 1) ---------------------------------------------------------------------
    def iter_episode(self, dataset_id: int, episode_index: int,
                     threads: int = 0) -> Iterator[tuple[np.ndarray, int]]:
        """Decode one episode once, in order: (frames as stored uint8 [V,H,W,3], content id) per frame.

        threads: decoder threads per camera (0 = automatic); they end with the iteration.
        """
        for frames in self.datasets[dataset_id].iter_episode_frames(episode_index, threads=threads):
            yield frames, frame_content_id(frames)

    # ---- random access (stage 2) ------------------------------------------------------------------
    def frame_orientation(self, dataset_id: int) -> str:
        """How dataset `dataset_id` stores its frames (its reader's FRAME_ORIENTATION; see transforms)."""
        return str(type(self.datasets[dataset_id]).FRAME_ORIENTATION)

    def read_stored_frames(self, i: int) -> np.ndarray:
        """Frames of global index i as stored (see `frame_orientation`), uint8 [V,H,W,3]."""
        d, e, f = self.locate(i)
        return self.datasets[d].read_frame(e, f)

    def action_chunk(self, dataset_id: int, episode_index: int, frame_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw actions a[t:t+H] [H,7] and pad mask [H]; past the episode end the last action repeats."""
        actions = self.datasets[dataset_id].episode_columns(episode_index)[ACTION_KEY]
        steps = frame_index + np.arange(self.action_horizon)
        pad = steps >= len(actions)
        return actions[np.minimum(steps, len(actions) - 1)].copy(), pad

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = self._check(i)
        d, e, f = self.locate(i)
        ds = self.datasets[d]
        cols = ds.episode_columns(e)
        actions, pad = self.action_chunk(d, e, f)
        return {
            "images": to_model_images(ds.read_frame(e, f), self.image_size, self.frame_orientation(d)),
            "instruction": ds.task_text(cols["task_index"][f]),
            "state": cols[STATE_KEY][f].copy(),
            "actions": actions,
            "action_pad": pad,
            "global_index": i,
            "dataset_id": d,
            "episode_index": e,
            "frame_index": f,
        }

    def close(self) -> None:
        for ds in self.datasets:
            ds.close()
