"""The background shard writer: a failed write surfaces in the main thread and never hangs the worker."""

from __future__ import annotations

import threading

import pytest

from geo3d.precompute.shard_writer import ShardWriter


class _Lease:
    def __init__(self, shard: int) -> None:
        self.shard, self.held = shard, True

    def release(self) -> None:
        self.held = False


class _FullDisk:
    def write_shard(self, *args, **kwargs):
        raise OSError("No space left on device")


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_write_failure_is_raised_and_abandon_after_close_returns(threads):
    """run.py calls close() and, when that raises, abandon(): with several writer threads this used to block
    forever putting a second round of stop sentinels into the bounded queue."""
    writer = ShardWriter(_FullDisk(), {}, None, depth=1, threads=threads)
    lease = _Lease(0)
    writer.submit(lease, object(), {}, 0.0)
    errors: list[BaseException] = []

    def close_then_abandon() -> None:
        for step in (writer.close, writer.abandon):
            try:
                step()
            except OSError as e:
                errors.append(e)

    t = threading.Thread(target=close_then_abandon, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "ShardWriter.abandon() after a failed close() hangs"
    assert len(errors) == 2 and "No space left" in str(errors[0])
    assert not lease.held and writer.shards_committed == []  # nothing stays claimed, nothing committed
