"""One precompute pass, one store per encoder tap (`precompute.taps`): the stores move as one.

All tap stores of a pass hold the same frames in the same shards (same dataset, layout and preprocessing; only the
encoder identity's tap, and possibly D, differ), so a shard is one unit of work for all of them: the planner
claims it in every store that still lacks it, the encoder runs once for the taps those stores need, and each
store commits its own copy with its own marker. A store already complete for a tap (e.g. `encoder` added to a
finished `info_sharing` store) costs nothing: its shards are never re-encoded nor rewritten.

`TapStores` offers the surface the planner, pipeline and writer use from a single `FeatureStore`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from geo3d.core.errors import StoreError


class GroupLease:
    """Held leases on one shard in every tap store that still needs it."""

    def __init__(self, shard: int, leases: Mapping[str, Any]):
        self.shard, self.leases = shard, dict(leases)

    @property
    def taps(self) -> tuple[str, ...]:
        """The taps to encode for this shard (stores that lacked it when claimed)."""
        return tuple(self.leases)

    @property
    def held(self) -> bool:
        return any(lease.held for lease in self.leases.values())

    def release(self) -> None:
        for lease in self.leases.values():
            lease.release()

    def __enter__(self) -> "GroupLease":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class TapStores:
    """The stores of one pass, keyed by tap (first = the encoder's own tap)."""

    def __init__(self, stores: Mapping[str, Any]):
        if not stores:
            raise StoreError("no tap stores to write")
        self.stores = dict(stores)
        first = next(iter(self.stores.values()))
        for tap, s in self.stores.items():
            if (s.spec.frames, s.spec.shard_frames) != (first.spec.frames, first.spec.shard_frames):
                raise StoreError(f"tap store {s.path} ({tap}) has {s.spec.frames} frames in shards of "
                                 f"{s.spec.shard_frames}, {first.path} {first.spec.frames} in {first.spec.shard_frames}:"
                                 " the stores of one pass must share frames and layout")

    def only(self, taps: Iterable[str]) -> TapStores:
        """The stores of `taps` alone: the planner claims shards only in the stores this run buffers tokens for
        (a store complete at the start is never claimed, even if a shard of it is un-committed meanwhile)."""
        return TapStores({t: self.stores[t] for t in taps})

    @property
    def first(self) -> Any:
        return next(iter(self.stores.values()))

    @property
    def path(self) -> Path:
        return self.first.path

    @property
    def num_shards(self) -> int:
        return self.first.num_shards

    def shard_range(self, shard: int) -> range:
        return self.first.shard_range(shard)

    def committed_shards(self) -> list[int]:
        """Shards committed in every tap store (the pass's finished work)."""
        done = None
        for s in self.stores.values():
            mine = set(s.committed_shards())
            done = mine if done is None else done & mine
        return sorted(done or ())

    def missing_shards(self) -> list[int]:
        done = set(self.committed_shards())
        return [i for i in range(self.num_shards) if i not in done]

    def is_committed(self, shard: int) -> bool:
        return all(s.is_committed(shard) for s in self.stores.values())

    def try_claim(self, shard: int) -> GroupLease | None:
        """Claim `shard` in every store that lacks it; None if another live process holds any of those, or none
        lacks it. A store committed between the check and the claim is dropped from the group."""
        leases: dict[str, Any] = {}
        for tap, s in self.stores.items():
            if s.is_committed(shard):
                continue
            lease = s.try_claim(shard)
            if lease is None:
                for held in leases.values():
                    held.release()
                return None
            if s.is_committed(shard):
                lease.release()
                continue
            leases[tap] = lease
        return GroupLease(shard, leases) if leases else None

    def write_shard(self, shard: int, tokens: Mapping[str, Any], index: Mapping[str, Any],
                    writer_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Commit each tap's tokens to its store (the caller holds the shard's group lease); returns the
        first store's marker."""
        markers = [self.stores[tap].write_shard(shard, t, index, writer_info=writer_info) for tap, t in tokens.items()]
        return markers[0]

    def __repr__(self) -> str:
        return "TapStores(" + ", ".join(f"{t}={str(s.path)!r}" for t, s in self.stores.items()) + ")"
