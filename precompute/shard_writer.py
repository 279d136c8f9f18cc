"""Background writer: checksums, writes and commits finished shards while the next ones are encoded.

Several threads may write at once: each shard is its own set of files with its own lease, so commits of
different shards never touch the same bytes (useful when one thread cannot keep up with a GPU: ~420 MB/s for
MapAnything tokens at ~350 frames/s).
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np


class ShardWriter:
    """`threads` writer threads; a bounded queue (at most `depth` encoded shards wait for a free thread)."""

    def __init__(self, store: Any, writer_info: dict[str, Any], log_paths: Mapping[str, Path] | Path | None,
                 depth: int = 1, threads: int = 1,
                 on_commit: Callable[[int, int], None] | None = None,
                 recycle: Callable[[Any], None] | None = None):
        self.store, self.writer_info = store, writer_info
        # shard logs: a Path gets every shard (one store); {tap: that store's log} (TapStores) gets only the shards
        # written to that tap's store, so each store's precompute_logs/ tells its own history
        self.log_paths: Path | dict[str, Path] = log_paths if isinstance(log_paths, Path) else dict(log_paths or {})
        self.on_commit, self.recycle = on_commit, recycle  # recycle: hand the token buffer back for reuse
        self.queue: "queue.Queue[tuple | None]" = queue.Queue(maxsize=max(1, depth))
        self.error: BaseException | None = None
        self.bytes_written = 0
        self.shards_committed: list[int] = []
        self._lock = threading.Lock()
        self._closed = False
        self.threads = [threading.Thread(target=self._run, name=f"geo3d-shard-writer-{i}", daemon=True)
                        for i in range(max(1, threads))]
        for t in self.threads:
            t.start()

    def submit(self, lease: Any, tokens: Any, index: dict[str, np.ndarray], encode_s: float,
               ready: Callable[[], None] | None = None) -> None:
        """Queue a shard (blocks while the queue is full); re-raises a failure of an earlier write.
        `ready` (e.g. a CUDA event's synchronize) is called before the tokens are read: they may still be
        arriving from the device."""
        self.raise_if_failed()
        self.queue.put((lease, tokens, index, encode_s, ready))

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            lease, tokens, index, encode_s, ready = item
            try:
                if ready is not None:
                    ready()
                if self.error is None:
                    self._write(lease, tokens, index, encode_s)
            except BaseException as e:  # surfaced to the main thread on its next submit/close
                self.error = e
            finally:
                lease.release()
                if self.recycle is not None:
                    self.recycle(tokens)

    def _write(self, lease: Any, tokens: Any, index: dict[str, np.ndarray], encode_s: float) -> None:
        t0 = time.perf_counter()
        marker = self.store.write_shard(lease.shard, tokens, index, writer_info=self.writer_info)
        parts = tokens if isinstance(tokens, dict) else {"": tokens}  # {tap: tokens} for TapStores
        nbytes = sum(int(t.numel()) * 2 for t in parts.values())
        with self._lock:
            self.bytes_written += nbytes
            self.shards_committed.append(lease.shard)
        logs = [self.log_paths] if isinstance(self.log_paths, Path) else \
            [self.log_paths[t] for t in parts if t in self.log_paths]  # the logs of the stores written
        if logs:  # an append-only record of every shard this worker encoded
            rec = {"shard": lease.shard, "frames": [marker["start"], marker["stop"]], "encode_s": round(encode_s, 3),
                   "write_s": round(time.perf_counter() - t0, 3), "bytes": nbytes, "host": socket.gethostname(),
                   "pid": os.getpid(), "written_utc": marker["written_utc"], "taps": [t for t in parts if t]}
            with self._lock:
                for path in logs:
                    with open(path, "a") as f:
                        f.write(json.dumps(rec) + "\n")
        if self.on_commit is not None:
            self.on_commit(lease.shard, nbytes)

    def close(self) -> None:
        """Drain the queue (every queued shard is committed), stop the threads, re-raise a write failure.

        Idempotent: after a failed close, `abandon()` calls it again, and with the threads gone a second round
        of stop sentinels would block forever on the bounded queue.
        """
        if not self._closed:
            self._closed = True
            for _ in self.threads:
                self.queue.put(None)
            for t in self.threads:
                t.join()
        self.raise_if_failed()

    def abandon(self) -> None:
        """Stop after the shard being written; release queued leases uncommitted (nothing half-written counts)."""
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].release()
                if self.recycle is not None:
                    self.recycle(item[1])
        self.close()
