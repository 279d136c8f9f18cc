"""Stage 1 for one worker: claim store shards, decode, encode on the device, commit in the background.

`store` is a precompute.tap_stores.TapStores (one store per encoder tap, claimed and written together).

decode (background processes, whole episodes, ahead) -> encode (this thread, batches that never cross a
store shard, so a shard's bytes do not depend on which worker made it) -> write + checksum + commit
(background thread). The three overlap; memory stays bounded (prefetch episodes + writer queue depth).
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch

from geo3d.encoders.base import GeometryEncoder


@dataclass
class RunStats:
    frames: int = 0
    shards: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    encode_s: float = 0.0
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


def encode_frames(encoder: GeometryEncoder, frames: np.ndarray, out: torch.Tensor | Mapping[str, torch.Tensor],
                  batch_size: int, stop: Callable[[int], bool] | None = None,
                  on_batch: Callable[[int], None] | None = None) -> bool:
    """Encode uint8 [n,V,S,S,3] into `out` bf16 [n,V,T,D] in fixed batches; False if `stop(done)` said so.

    `out` is one tensor (the encoder's own tap) or {tap: tensor}: every tap from the same forward per batch."""
    device = encoder.device
    cuda = device.type == "cuda"
    outs = dict(out) if isinstance(out, Mapping) else {encoder.tap: out}
    for a in range(0, len(frames), batch_size):
        if stop is not None and stop(a):
            return False
        x = torch.from_numpy(frames[a:a + batch_size])
        if cuda:  # pinned (cached host allocator) -> async copies, so the CPU can queue the next batch early
            x = x.pin_memory().to(device, non_blocking=True)
        got = encoder.encode_taps(x, tuple(outs))
        for tap, dst in outs.items():
            dst[a:a + len(x)].copy_(got[tap], non_blocking=cuda)
        if on_batch is not None:
            on_batch(len(x))
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    return True


def run_worker(encoder: GeometryEncoder, store: Any, planner: Any, feeder: Any, writer: Any, buffers: TokenBuffers,
               batch_size: int, preempt: Any, grace_s: float, bar: Any) -> RunStats:
    """The shard loop. Returns what this worker encoded; leaves dropped shards unclaimed for a later run."""
    stats = RunStats()
    for lease in planner:
        if preempt.requested:
            lease.release()
            break
        try:
            done = _encode_shard(encoder, store, lease, feeder, writer, buffers, batch_size, preempt, grace_s, bar,
                                 stats)
        except BaseException:
            lease.release()  # never leave a claim behind in this process (bench, tests, library use)
            raise
        if not done or preempt.requested:
            break
    stats.ended = time.perf_counter()
    return stats


def _encode_shard(encoder: GeometryEncoder, store: Any, lease: Any, feeder: Any, writer: Any, buffers: TokenBuffers,
                  batch_size: int, preempt: Any, grace_s: float, bar: Any, stats: RunStats) -> bool:
    """Decode + encode one claimed shard and queue it for commit; False when dropped on preemption."""
    rng = store.shard_range(lease.shard)
    frames, index = feeder.shard(rng)
    out = buffers.take(len(rng), lease.taps)  # only the taps whose stores still lack this shard
    t0 = time.perf_counter()

    def stop(done: int) -> bool:  # on preemption: finish this shard only if the rest is quick
        if not preempt.requested:
            return False
        fps = stats.frames / stats.encode_s if stats.encode_s > 0 else 0.0
        return fps <= 0 or (len(rng) - done) / fps > grace_s

    try:
        finished = encode_frames(encoder, frames, out, batch_size, stop, bar.update)
    except BaseException:
        buffers.give_back(out)
        raise
    dt = time.perf_counter() - t0
    stats.encode_s += dt
    if not finished:
        buffers.give_back(out)
        lease.release()
        stats.dropped.append(lease.shard)
        return False
    stats.frames += len(rng)
    stats.shards.append(lease.shard)
    if stats.first_shard_done is None:
        stats.first_shard_done, stats.first_shard_frames = time.perf_counter(), len(rng)
    bar.set_postfix_str(f"shard {lease.shard}/{store.num_shards}", refresh=False)
    writer.submit(lease, out, index, dt)
    return True
