"""What `verify_store` found: faults naming the bad frames, per-level costs, human and JSON renderings."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

# Fault kinds whose shards hold wrong or unreadable data: marking them damaged makes precompute redo them.
DATA_FAULTS = ("marker", "missing_chunk", "undecodable", "checksum", "nonfinite", "index", "content_id", "recompute")


@dataclass
class Fault:
    kind: str  # metadata | marker | uncommitted | missing_chunk | undecodable | checksum | nonfinite | index |
    #            dataset | content_id | recompute
    message: str
    frames: list[int] = field(default_factory=list)  # global frame indices concerned (may be empty)
    shards: list[int] = field(default_factory=list)


@dataclass
class VerifyReport:
    path: str
    frames: int = 0
    num_shards: int = 0
    committed_shards: int = 0
    header: dict[str, Any] = field(default_factory=dict)  # shape, encoder, schema... for the summary
    faults: list[Fault] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was skipped or tolerated, and why
    levels: dict[str, dict[str, float]] = field(default_factory=dict)  # level -> {seconds, frames}
    recompute: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.faults

    def add(self, kind: str, message: str, frames=(), shards=()) -> None:
        self.faults.append(Fault(kind, message, sorted(int(f) for f in frames), sorted({int(s) for s in shards})))

    def bad_frames(self) -> list[int]:
        return sorted({f for fault in self.faults for f in fault.frames})

    def damaged_shards(self) -> list[int]:
        """Committed shards whose data is wrong: what `--mark-damaged` un-commits for precompute to redo."""
        return sorted({s for f in self.faults if f.kind in DATA_FAULTS for s in f.shards})

    def timed(self, level: str, seconds: float, frames: int) -> None:
        self.levels[level] = {"seconds": round(seconds, 4), "frames": int(frames),
                              "seconds_per_10k_frames": round(seconds / frames * 1e4, 2) if frames else 0.0}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["bad_frames"] = self.bad_frames()
        d["damaged_shards"] = self.damaged_shards()
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=str)

    def summary(self) -> str:
        h = self.header
        lines = [f"store {self.path}: {self.frames} frames of {h.get('frame_shape', '?')} {h.get('dtype', '')}, "
                 f"{self.committed_shards}/{self.num_shards} shards committed, encoder "
                 f"{h.get('encoder', '?')}, schema {h.get('schema_version', '?')}"]
        for level, t in self.levels.items():
            lines.append(f"  checked {level}: {t['frames']} frames in {t['seconds']:.2f}s "
                         f"({t['seconds_per_10k_frames']:.1f}s per 10k frames)")
        if self.recompute:
            r = self.recompute
            lines.append(f"  recompute: {r['frames_checked']} frames on {r['device']}, "
                         f"bit-exact={r['bit_exact']}, max abs diff {r['max_abs_diff']:.3g}; compared "
                         f"{r.get('comparison', 'bit-exact' if r.get('exact_required') else 'with atol')}")
        lines += [f"  note: {n}" for n in self.notes]
        if self.ok:
            lines.append("result: CLEAN")
            return "\n".join(lines)
        lines.append(f"FAULTS ({len(self.faults)}):")
        for f in self.faults:
            where = f" [frames {format_frames(f.frames)}]" if f.frames else ""
            lines.append(f"  {f.kind}: {f.message}{where}")
        damaged = self.damaged_shards()
        lines.append(f"result: {len(self.faults)} fault(s), {len(self.bad_frames())} bad frame(s)"
                     + (f", {len(damaged)} damaged shard(s) {format_frames(damaged)}: run `geo3d verify-cache "
                        f"{self.path} --mark-damaged`, then `geo3d precompute` redoes only those" if damaged else ""))
        return "\n".join(lines)


def frame_ranges(frames: list[int]) -> list[tuple[int, int]]:
    """Sorted ints -> inclusive (first, last) runs."""
    out: list[tuple[int, int]] = []
    for f in sorted(set(frames)):
        if out and f == out[-1][1] + 1:
            out[-1] = (out[-1][0], f)
        else:
            out.append((f, f))
    return out


def format_frames(frames: list[int], limit: int = 12) -> str:
    runs = [f"{a}" if a == b else f"{a}-{b}" for a, b in frame_ranges(frames)]
    more = f" (+{len(runs) - limit} more ranges)" if len(runs) > limit else ""
    return ", ".join(runs[:limit]) + more
