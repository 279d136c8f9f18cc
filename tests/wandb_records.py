"""Read an offline wandb run's `.wandb` file back: wandb's LevelDB-style record log of protobuf `Record`s.

wandb >= 0.19 no longer ships a Python reader (the writer is the Go `wandb-core`), so this follows its
documented layout: a 7-byte file header (":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of records,
each with a 7-byte header (crc32 over type byte + data, little-endian u16 length, u8 type FULL/FIRST/
MIDDLE/LAST); a block tail shorter than a header is zero padding. Checksums are verified.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any, Iterator

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[Any]:
    """Every protobuf Record of a .wandb file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path} is not a wandb record log"
    pos, parts = HEADER, []
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left
            continue
        body = data[pos + HEADER:pos + HEADER + length]
        assert zlib.crc32(body, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, f"bad checksum at {pos}"
        pos += HEADER + length
        parts.append(body)
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(b"".join(parts))
            parts = []
            yield rec


def _value(item: Any) -> Any:
    if item.value_json:
        return json.loads(item.value_json)
    which = item.WhichOneof("value") if "value" in [o.name for o in item.DESCRIPTOR.oneofs] else None
    return getattr(item, which) if which else None


def _key(item: Any) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def history(path: Path) -> list[dict[str, Any]]:
    """The logged rows: one {key: value} dict per wandb.log call (wandb adds `_step`, `_runtime`, ...)."""
    return [{_key(i): _value(i) for i in r.history.item} for r in records(path) if r.WhichOneof("record_type") == "history"]


def config(path: Path) -> dict[str, Any]:
    """The run's config: the run record's (sent by wandb.init), later config updates merged in."""
    out: dict[str, Any] = {}
    for r in records(path):
        kind = r.WhichOneof("record_type")
        updates = r.run.config.update if kind == "run" else r.config.update if kind == "config" else []
        for i in updates:
            out[_key(i)] = json.loads(i.value_json)
    return out
