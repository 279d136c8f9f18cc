"""Stage 1 for one worker: claim store shards, decode, encode on the device, commit in the background.

`store` is a precompute.tap_stores.TapStores: one store per encoder tap (`precompute.taps`), claimed and written
together; each encoder call computes every tap the shards in its batch still lack, from one forward.

decode (background processes, whole episodes, ahead) -> encode (this thread) -> write + checksum + commit
(background threads). The three overlap; memory stays bounded (prefetch episodes + token buffers).

Batches are filled across shard boundaries: the worker claims the next shard (one owner per shard, the
store's lease) whenever the shards in flight hold fewer unencoded frames than a batch, so every encoder call
gets `batch_size` frames even when `batch_size` > `store.shard_frames`; a shard is committed as soon as all its
frames are encoded. A frame's tokens depend only on the shape of the batch it is in, not on its neighbours
(rows are independent in every layer; CPU tokens are even batch-size independent: tests/test_encoders_tiny.py).
GPU kernels are chosen per shape, so with `full_batches` (precompute.full_batches, auto = on CUDA) a short
last batch is padded to `batch_size`: every call has one shape and a shard's bytes do not depend on which
worker made it, or on where a killed run resumed.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from geo3d.encoders.base import GeometryEncoder


@dataclass
class RunStats:
    frames: int = 0
    shards: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    encode_s: float = 0.0
    encoded: int = 0  # frames through the encoder (committed or not): the rate that decides a preemption
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None
    first_shard_done: float | None = None  # startup (first decode, warm-up) ends here
    first_shard_frames: int = 0

    @property
    def seconds(self) -> float:
        return (self.ended or time.perf_counter()) - self.started

    @property
    def steady_fps(self) -> float | None:
        """frames/s after the first shard: the rate a long job (e.g. libero_all) runs at."""
        if self.first_shard_done is None or self.frames <= self.first_shard_frames:
            return None
        end = self.ended or time.perf_counter()
        return (self.frames - self.first_shard_frames) / max(end - self.first_shard_done, 1e-9)


class TokenBuffers:
    """Reusable (pinned, on CUDA) CPU buffers for a shard's tokens, one pool per tap (D may differ between taps):
    the writer hands them back after commit."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], pinned: bool, count: int):
        self.shapes, self.pinned = dict(shapes), pinned
        self.free: dict[str, "queue.Queue[torch.Tensor]"] = {tap: queue.Queue() for tap in self.shapes}
        for tap, shape in self.shapes.items():
            for _ in range(count):
                self.free[tap].put(torch.empty(shape, dtype=torch.bfloat16, pin_memory=pinned))

    def take(self, n: int, taps: tuple[str, ...]) -> dict[str, torch.Tensor]:
        return {tap: self.free[tap].get()[:n] for tap in taps}

    def give_back(self, tokens: Mapping[str, torch.Tensor]) -> None:
        for tap, t in tokens.items():
            self.free[tap].put(t._base if t._base is not None else t)


def encode_array(encoder: GeometryEncoder, frames: np.ndarray, taps: tuple[str, ...],
                 pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """uint8 [n,V,S,S,3] -> {tap: bf16 [n,V,T,D]} on the encoder's device, every tap from one forward, in one call
    of `pad_to` rows when given (the pad repeats the last frame; its tokens are dropped)."""
    n = len(frames)
    if pad_to is not None and n < pad_to:
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad_to - n, axis=0)])
    x = torch.from_numpy(frames)
    if encoder.device.type == "cuda":  # pinned (cached host allocator) -> async copies, the CPU queues ahead
        x = x.pin_memory().to(encoder.device, non_blocking=True)
    return {tap: y[:n] for tap, y in encoder.encode_taps(x, taps).items()}


def encode_frames(encoder: GeometryEncoder, frames: np.ndarray, out: torch.Tensor | Mapping[str, torch.Tensor],
                  batch_size: int, full_batches: bool = False) -> None:
    """Encode uint8 [n,V,S,S,3] into `out` bf16 [n,V,T,D] (one tensor: the encoder's own tap, or {tap: tensor})
    in fixed batches (the encoder-only benchmark, the taps tests)."""
    cuda = encoder.device.type == "cuda"
    outs = dict(out) if isinstance(out, Mapping) else {encoder.tap: out}
    for a in range(0, len(frames), batch_size):
        got = encode_array(encoder, frames[a:a + batch_size], tuple(outs), batch_size if full_batches else None)
        for tap, dst in outs.items():
            dst[a:a + len(got[tap])].copy_(got[tap], non_blocking=cuda)
    if cuda:
        torch.cuda.current_stream(encoder.device).synchronize()


@dataclass
class _Shard:
    """A claimed shard in flight: its decoded frames, index, token buffers (one per tap its stores still lack)
    and how far the encoder got."""

    lease: Any
    frames: np.ndarray
    index: dict[str, np.ndarray]
    out: dict[str, torch.Tensor]
    done: int = 0
    encode_s: float = 0.0

    @property
    def left(self) -> int:
        return len(self.frames) - self.done


def run_worker(encoder: GeometryEncoder, store: Any, planner: Any, feeder: Any, writer: Any, buffers: TokenBuffers,
               batch_size: int, preempt: Any, grace_s: float, bar: Any, full_batches: bool = False) -> RunStats:
    """The shard loop. Returns what this worker encoded; leaves dropped shards unclaimed for a later run.

    On preemption no new shard is claimed; the shards in flight are finished when the rest takes less than
    `grace_s` at the rate so far, else released uncommitted (a later run redoes them)."""
    stats, claims, flight, more = RunStats(), iter(planner), [], True
    try:
        while True:
            if preempt.requested:
                more = False
                if flight and not _quick(flight, stats, grace_s):
                    _release(flight, buffers, stats.dropped)
                    break
            while more and sum(s.left for s in flight) < batch_size:
                lease = None if preempt.requested else next(claims, None)
                if lease is None:
                    more = False
                    break
                flight.append(_open(store, lease, feeder, buffers))
            if not flight:
                break
            _encode_batch(encoder, flight, batch_size, full_batches, stats, bar)
            _submit_finished(encoder.device, flight, writer, stats, store, bar)
    except BaseException:
        _release(flight, buffers, [])  # never leave a claim behind in this process (bench, tests, library use)
        raise
    stats.ended = time.perf_counter()
    return stats


def _quick(flight: list[_Shard], stats: RunStats, grace_s: float) -> bool:
    """Can the shards in flight be finished within the grace period at the encoder's rate so far?"""
    fps = stats.encoded / stats.encode_s if stats.encode_s > 0 else 0.0
    return fps > 0 and sum(s.left for s in flight) / fps <= grace_s


def _release(flight: list[_Shard], buffers: TokenBuffers, dropped: list[int]) -> None:
    for s in flight:
        buffers.give_back(s.out)
        s.lease.release()
        dropped.append(s.lease.shard)
    flight.clear()


def _open(store: Any, lease: Any, feeder: Any, buffers: TokenBuffers) -> _Shard:
    """Decode a claimed shard's frames and take a token buffer for it (blocks while the writer holds all)."""
    try:
        rng = store.shard_range(lease.shard)
        frames, index = feeder.shard(rng)
        return _Shard(lease, frames, index, buffers.take(len(rng), lease.taps))
    except BaseException:
        lease.release()
        raise


def _encode_batch(encoder: GeometryEncoder, flight: list[_Shard], batch_size: int, full_batches: bool,
                  stats: RunStats, bar: Any) -> None:
    """One encoder call on the next `batch_size` unencoded frames of the shards in flight, in order."""
    parts, need = [], batch_size
    for s in flight:
        k = min(need, s.left)
        if k:
            parts.append((s, s.done, s.done + k))
            need -= k
    n = batch_size - need
    t0 = time.perf_counter()
    x = parts[0][0].frames[parts[0][1]:parts[0][2]] if len(parts) == 1 else \
        np.concatenate([s.frames[a:b] for s, a, b in parts])
    taps = tuple(dict.fromkeys(t for s, _, _ in parts for t in s.out))  # what any shard of the batch lacks
    y = encode_array(encoder, x, taps, batch_size if full_batches else None)
    cuda, off = encoder.device.type == "cuda", 0
    for s, a, b in parts:
        for tap, dst in s.out.items():
            dst[a:b].copy_(y[tap][off:off + b - a], non_blocking=cuda)
        off, s.done = off + b - a, b
    dt = time.perf_counter() - t0
    for s, a, b in parts:
        s.encode_s += dt * (b - a) / n
    stats.encode_s, stats.encoded = stats.encode_s + dt, stats.encoded + n
    bar.update(n)


def _submit_finished(device: torch.device, flight: list[_Shard], writer: Any, stats: RunStats, store: Any,
                     bar: Any) -> None:
    """Hand every fully encoded shard (a prefix of the flight: batches fill shards in order) to the writer."""
    while flight and flight[0].left == 0:
        s = flight[0]
        ready = None
        if device.type == "cuda":  # the writer thread waits for this shard's copies; this thread queues on
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            ready = event.synchronize
        writer.submit(s.lease, s.out, s.index, s.encode_s, ready=ready)
        flight.pop(0)
        stats.frames += len(s.frames)
        stats.shards.append(s.lease.shard)
        if stats.first_shard_done is None:
            stats.first_shard_done, stats.first_shard_frames = time.perf_counter(), len(s.frames)
        bar.set_postfix_str(f"shard {s.lease.shard}/{store.num_shards}", refresh=False)
