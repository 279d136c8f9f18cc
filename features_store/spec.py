"""What a features store holds and how it is laid out: the spec every writer must agree on.

A store is identified by its content (frame count, token shape, encoder, preprocessing, dataset) AND its
layout (shard size, chunking, compressor): two processes attaching with different specs would write
incompatible data into one store, so `diff_specs` names every difference and attaching is refused.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from geo3d.core.errors import StoreError
from geo3d.core.provenance import plain_json, without_runtime
from geo3d.core.taps import tap_of

SCHEMA_VERSION = 1
DTYPE = "bfloat16"  # the real dtype of the tokens
STORAGE_DTYPE = "uint16"  # zarr has no bfloat16: the bf16 bits are stored as uint16 and viewed back exactly
CHECKSUM_ALGO = "sha256/64"  # first 8 bytes of sha256 over a frame's stored bytes, as little-endian uint64
COMPRESSORS = ("none", "zstd", "blosc_zstd")
META_KEY = "geo3d"  # key of the geo3d metadata inside the root group's zarr attributes


@dataclass(frozen=True)
class StoreLayout:
    """How frames are placed on disk. These defaults are the one source (configs/store.yaml sets only what
    differs), chosen by measurement: see README and scripts/bench_store.py.

    `shard_frames` is the unit of work AND (with `sharding`) the file: one writer per shard, ~N/shard_frames
    files. `chunk_frames` is the read granularity: 1 keeps random single-frame reads cheap.
    """

    shard_frames: int = 64  # one writer per shard, ~N/64 files (libero_all: ~4.3k)
    chunk_frames: int = 1  # 1-frame chunks keep random single-frame reads ~1-2 ms
    sharding: bool = True  # pack each shard's 1-frame chunks in one file; false = one file per chunk
    compressor: str = "none"  # none | zstd | blosc_zstd (bf16 compresses only ~1.3x)
    compression_level: int = 3

    def __post_init__(self) -> None:
        if self.shard_frames < 1 or self.chunk_frames < 1 or self.shard_frames % self.chunk_frames:
            raise StoreError(f"store layout: shard_frames ({self.shard_frames}) must be a positive multiple of "
                             f"chunk_frames ({self.chunk_frames}); fix configs/store.yaml or the overrides")
        if self.compressor not in COMPRESSORS:
            raise StoreError(f"store layout: unknown compressor {self.compressor!r}; use one of {COMPRESSORS}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "StoreLayout":
        """Build from the `store` section of a config (unknown keys are an error, not silently ignored)."""
        keys = {f.name for f in dataclasses.fields(cls)}
        unknown = set(cfg) - keys
        if unknown:
            raise StoreError(f"unknown store config keys {sorted(unknown)}; known: {sorted(keys)}")
        return cls(**{k: cfg[k] for k in keys if k in cfg})


@dataclass(frozen=True)
class StoreSpec:
    """Everything that defines a store's content. `encoder` = {name, tap, fingerprint, config}; `preprocessing` =
    {resolution, view order, rotation, normalization, pooling...}; `dataset` = `LiberoMixture.identity()`."""

    frames: int
    views: int = 2
    tokens: int = 196
    dim: int = 1536
    encoder: Mapping[str, Any] = field(default_factory=dict)
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    dataset: Mapping[str, Any] = field(default_factory=dict)
    layout: StoreLayout = field(default_factory=StoreLayout)

    def __post_init__(self) -> None:
        for name in ("frames", "views", "tokens", "dim"):
            if int(getattr(self, name)) < 1:
                raise StoreError(f"store spec: {name} must be >= 1, got {getattr(self, name)}")
        missing = [k for k in ("name", "fingerprint", "config") if k not in self.encoder]
        if missing:
            raise StoreError(f"store spec: encoder identity lacks {missing}; pass {{name, fingerprint, config}}")
        # The tap (geo3d.core.taps) is part of what the tokens mean; stores made before taps existed hold the
        # default tap and read back with it, so they still attach to and compare with new specs.
        object.__setattr__(self, "encoder", {**self.encoder, "tap": tap_of(dict(self.encoder))})
        # Normalise to plain JSON types so a spec read back from disk compares equal to the one given.
        for name in ("encoder", "preprocessing", "dataset"):
            object.__setattr__(self, name, _jsonable(getattr(self, name), name))

    @property
    def tap(self) -> str:
        """Which encoder output the tokens are (geo3d.core.taps)."""
        return str(self.encoder["tap"])

    @property
    def shard_frames(self) -> int:
        return self.layout.shard_frames

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return (self.views, self.tokens, self.dim)

    @property
    def frame_nbytes(self) -> int:
        return self.views * self.tokens * self.dim * 2

    @property
    def num_shards(self) -> int:
        return -(-self.frames // self.shard_frames)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layout"] = dataclasses.asdict(self.layout)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StoreSpec":
        d = dict(d)
        layout = StoreLayout(**d.pop("layout", {}))
        return cls(layout=layout, **d)


def _jsonable(value: Any, what: str) -> Any:
    """A JSON round-trip: tuples become lists, numpy scalars must be converted by the caller (clear error)."""
    try:
        return plain_json(value)
    except TypeError as e:
        raise StoreError(f"store spec: {what} must be JSON-serialisable (plain dict/list/str/number): {e}") from e


def attach_view(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A spec dict as attaching compares it: without the encoder's informational `runtime` (the device and
    kernel versions of the worker that created the store; each shard's marker records its own), so a store
    may be resumed on another device type or torch. Stores written before runtimes existed compare as before."""
    out = dict(spec)
    if isinstance(out.get("encoder"), Mapping):
        out["encoder"] = without_runtime(out["encoder"])
    return out


def diff_specs(stored: Mapping[str, Any], requested: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two spec dicts, one line per differing leaf key."""
    out: list[str] = []
    for key in sorted(set(stored) | set(requested), key=str):
        path = f"{prefix}{key}"
        a, b = stored.get(key, "<absent>"), requested.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(diff_specs(a, b, prefix=f"{path}."))
        elif a != b:
            out.append(f"{path}: store has {_short(a)}, requested {_short(b)}")
    return out


def _short(v: Any, limit: int = 120) -> str:
    s = json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= limit else s[: limit - 3] + "..."
