"""Which store shard to encode next: any number of workers, started at any time, completes the store.

Worker r of N starts at the front of block r (shards [r*S/N, (r+1)*S/N)) and walks forward, so consecutive
shards reuse decoded episodes. When its next shard is committed or claimed by someone else, it re-plans: it
takes the front of the longest run of uncommitted shards if nobody holds it, else the middle of that run
(the holder walks forward from the front). Claims are the store's flock leases, so a killed worker's shard is
free again immediately, and a later run with a different N still finishes the job.
"""

from __future__ import annotations

from typing import Any, Iterator


def missing_runs(num_shards: int, committed: set[int]) -> list[tuple[int, int]]:
    """Maximal runs [a, b) of uncommitted shards, longest first (ties: lowest start)."""
    runs, a = [], None
    for i in range(num_shards + 1):
        missing = i < num_shards and i not in committed
        if missing and a is None:
            a = i
        elif not missing and a is not None:
            runs.append((a, i))
            a = None
    return sorted(runs, key=lambda r: (-(r[1] - r[0]), r[0]))


class ShardPlanner:
    """Yields held leases (`store.try_claim`) for uncommitted shards until nothing is left to claim."""

    def __init__(self, store: Any, rank: int, world: int, end: int | None = None):
        """end: plan only shards [0, end) (a trial, precompute --limit-frames); None = every shard."""
        self.store, self.rank, self.world = store, rank, world
        self.end = store.num_shards if end is None else min(int(end), store.num_shards)
        self._yielded: list[Any] = []  # our own leases (still held while the writer commits them)

    def _held_by_me(self, shard: int) -> bool:
        self._yielded = [lease for lease in self._yielded if lease.held]
        return any(lease.shard == shard for lease in self._yielded)

    def _claim(self, shard: int) -> Any | None:
        if self.store.is_committed(shard) or self._held_by_me(shard):
            return None
        lease = self.store.try_claim(shard)
        if lease is not None and self.store.is_committed(shard):  # committed between the check and the claim
            lease.release()
            return None
        return lease

    def _block(self) -> range:
        s = self.end
        return range(self.rank * s // self.world, (self.rank + 1) * s // self.world)

    def _replan(self) -> Any | None:
        committed = set(self.store.committed_shards())
        for a, b in missing_runs(self.end, committed):
            for shard in [a, *range(a + (b - a) // 2, b)]:
                lease = self._claim(shard)
                if lease is not None:
                    return lease
        return None

    def __iter__(self) -> Iterator[Any]:
        lease = None
        committed = set(self.store.committed_shards())
        for shard in self._block():  # preferred: my own block, from its first missing shard
            if shard not in committed:
                lease = self._claim(shard)
                break
        while True:
            if lease is None:
                lease = self._replan()
                if lease is None:
                    return
            nxt = lease.shard + 1
            self._yielded.append(lease)
            yield lease
            lease = self._claim(nxt) if nxt < self.end else None
