"""Background decoding: whole episodes, sequentially, in worker processes, a few episodes ahead of the encoder.

Why whole episodes: video decoding is sequential (random seeks are far more expensive), and a store shard
(64 frames by default) is shorter than a LIBERO episode (~160 frames), so consecutive shards share episodes.
Each episode is decoded once, brought upright (its reader's FRAME_ORIENTATION) and resized in the worker, and
kept until the encoder has consumed it. A shard that spans an episode boundary simply takes frames from both episodes.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np

from geo3d.core.errors import DataError
from geo3d.core.preemption import ignore_stop_signals
from geo3d.data.mixture import LiberoMixture
from geo3d.encoders.views import frames_to_model_input

# One LiberoMixture per (suite, data root, image size) in each process: decode processes build theirs once;
# in-process decoding (threads) keys by the source, so two runs on other data in one process never mix them.
_MIXTURES: dict[tuple[str, str | None, int], Any] = {}


@dataclass(frozen=True)
class DataSource:
    """What a decode worker needs to rebuild the mixture (picklable, for spawned processes)."""

    suite: str
    data_root: str | None
    image_size: int
    decoder_threads: int = 0  # per camera; 0 = automatic. Decode processes use 1: the processes are the parallelism


@dataclass
class DecodedEpisode:
    """Model-ready frames of one episode: uint8 [L,V,S,S,3] upright + resized, and content ids uint64 [L]."""

    dataset_id: int
    episode_index: int
    start: int  # global index of frame 0
    frames: np.ndarray
    content_ids: np.ndarray


def _init_worker(source: DataSource, ignore_signals: bool) -> None:
    """Per-process setup. Decode processes ignore SIGTERM/SIGINT/SIGUSR1: the parent handles preemption."""
    if ignore_signals:
        ignore_stop_signals()
        threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()

    key = (source.suite, source.data_root, source.image_size)
    if key not in _MIXTURES:
        _MIXTURES[key] = LiberoMixture(source.suite, source.data_root, image_size=source.image_size)


def _exit_with_parent(parent: int) -> None:
    """A decode process must not outlive its parent (e.g. after kill -9 of the precompute worker)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _ready() -> bool:
    return bool(_MIXTURES)


def decode_episode(source: DataSource, dataset_id: int, episode_index: int) -> DecodedEpisode:
    """Decode one episode in order; frames go through the one image path (to_model_images)."""
    key = (source.suite, source.data_root, source.image_size)
    if key not in _MIXTURES:
        _init_worker(source, ignore_signals=False)
    mix = _MIXTURES[key]
    span = mix.span(dataset_id, episode_index)
    frames: np.ndarray | None = None
    ids = np.empty(span.length, dtype=np.uint64)
    orientation = mix.frame_orientation(dataset_id)
    for k, (stored, cid) in enumerate(mix.iter_episode(dataset_id, episode_index, threads=source.decoder_threads)):
        img = frames_to_model_input(stored, source.image_size, orientation)
        if frames is None:
            frames = np.empty((span.length, *img.shape), dtype=np.uint8)
        frames[k], ids[k] = img, cid
    if frames is None:
        raise DataError(f"episode {episode_index} of {mix.datasets[dataset_id].path} decoded no frames; its "
                        "videos are empty or unreadable: re-export or remove that episode")
    return DecodedEpisode(dataset_id, episode_index, span.start, frames, ids)


class EpisodeFeeder:
    """Hands out a shard's frames in global order, decoding episodes ahead in background workers."""

    def __init__(self, spans: list[Any], source: DataSource, workers: int, prefetch: int):
        self.spans = spans
        self.starts = np.array([s.start for s in spans], dtype=np.int64)
        if workers > 0:
            source = dataclasses.replace(source, decoder_threads=1)  # no oversubscription: N processes x 1 thread
        self.source, self.prefetch = source, max(0, int(prefetch))
        self.pending: "OrderedDict[int, Future]" = OrderedDict()  # span position -> Future[DecodedEpisode]
        self.executor: Executor
        if workers > 0:
            self.executor = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                                initializer=_init_worker, initargs=(source, True))
        else:  # one background thread in this process (PyAV and PIL release the GIL while they work)
            self.executor = ThreadPoolExecutor(1, initializer=_init_worker, initargs=(source, False))

    def warm_up(self) -> None:
        """Start every decode worker now (each builds its dataset index), not at the first shard."""
        for _ in range(getattr(self.executor, "_max_workers", 1)):
            self.executor.submit(_ready)

    def _submit(self, pos: int) -> None:
        if pos < len(self.spans) and pos not in self.pending:
            s = self.spans[pos]
            self.pending[pos] = self.executor.submit(decode_episode, self.source, s.dataset_id, s.episode_index)

    def shard(self, rng: range) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Frames uint8 [n,V,S,S,3] of global frames `rng` plus the store's per-frame index arrays."""
        first = int(np.searchsorted(self.starts, rng.start, side="right") - 1)
        last = int(np.searchsorted(self.starts, rng.stop - 1, side="right") - 1)
        for pos in list(self.pending):  # forget episodes we will not need (we jumped elsewhere)
            if not first <= pos <= last + self.prefetch:
                self.pending.pop(pos).cancel()
        for pos in range(first, last + 1 + self.prefetch):
            self._submit(pos)
        parts, ids, index = [], [], {k: [] for k in ("dataset_id", "episode_index", "frame_index")}
        for pos in range(first, last + 1):
            ep = self._result(pos)
            lo, hi = max(rng.start, ep.start) - ep.start, min(rng.stop, ep.start + len(ep.frames)) - ep.start
            parts.append(ep.frames[lo:hi])
            ids.append(ep.content_ids[lo:hi])
            index["dataset_id"].append(np.full(hi - lo, ep.dataset_id, np.int64))
            index["episode_index"].append(np.full(hi - lo, ep.episode_index, np.int64))
            index["frame_index"].append(np.arange(lo, hi, dtype=np.int64))
        end = self.spans[last].start + self.spans[last].length
        if end == rng.stop:  # the last episode is used up: free its frames
            self.pending.pop(last, None)
        for pos in range(first, last):
            self.pending.pop(pos, None)
        out = {k: np.concatenate(v) for k, v in index.items()}
        out["content_id"] = np.concatenate(ids)
        return np.concatenate(parts), out

    def _result(self, pos: int) -> DecodedEpisode:
        try:
            return self.pending[pos].result()
        except BrokenProcessPool as e:
            raise DataError(f"a decode worker died while decoding episode {self.spans[pos].episode_index} of "
                            f"dataset {self.spans[pos].dataset_id} (out of memory?); lower "
                            "precompute.decode_workers / precompute.prefetch_episodes and rerun (it resumes)") from e

    def close(self) -> None:
        for fut in self.pending.values():
            fut.cancel()
        self.pending.clear()
        self.executor.shutdown(wait=True, cancel_futures=True)

