"""`geo3d export`: a features store's tokens + per-frame index + metadata as HDF5, .npy or .pt files.

For researchers whose trainer is not geo3d. Streaming: one store shard in memory at a time, whatever the
store's size. Every frame's bits are checked against the store's per-frame checksum when read, and the
written output is read back and checked again before it is published (temp name -> atomic rename), so a
reported export is a bit-exact copy. The layouts are documented in features_store/README.md.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import h5py
import numpy as np
import torch
from tqdm import tqdm

from geo3d.core.errors import Geo3dError, StoreError
from geo3d.core.provenance import provenance, utc_now
from geo3d.features_store import array_layout as L
from geo3d.features_store.metadata import read_metadata
from geo3d.features_store.reader import FeatureReader
from geo3d.features_store.store import open_arrays
from geo3d.features_store.token_codec import bits_to_bf16, frame_checksums

FORMATS = ("hdf5", "npy", "pt")
EXPORT_VERSION = 1
INDEX_FIELDS = ("global_index", *L.INT_INDEX, L.CONTENT_ID, L.CHECKSUM)


@dataclass
class Selection:
    """Which store frames to export: global indices (sorted) plus what the user asked for."""

    frames: np.ndarray
    request: dict[str, Any] = field(default_factory=dict)


def parse_frames(text: str | None, n: int) -> range:
    """`START:STOP` (either side may be empty; Python slice rules, no step) -> range over [0, n)."""
    if not text:
        return range(n)
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        start, stop = (int(p) if p.strip() else None for p in parts)
    except ValueError:
        raise Geo3dError(f"--frames {text!r}: expected START:STOP, e.g. 0:1000 or 5000: (global frame indices)") from None
    return range(n)[slice(start, stop)]


def select_frames(reader: Any, suite: str | None, frames: str | None, allow_incomplete: bool) -> Selection:
    """Frames of the store matching --suite / --frames; uncommitted ones refused unless allow_incomplete."""
    spec = reader.spec
    idx = np.asarray(parse_frames(frames, spec.frames), dtype=np.int64)
    if suite:
        names = [d.get("name", "") for d in spec.dataset.get("datasets", [])]
        ids = [i for i, name in enumerate(names) if name == suite or name.startswith(suite + "_")]
        if not ids:
            raise Geo3dError(f"--suite {suite}: the store holds no such dataset (it holds {names})")
        ranges = _dataset_ranges(spec.dataset)
        keep = np.zeros(spec.frames, bool)
        for i in ids:
            keep[ranges[i][0]:ranges[i][1]] = True
        idx = idx[keep[idx]]
    committed = reader.committed_mask()[idx]
    if not committed.all():
        missing = idx[~committed]
        msg = (f"store {reader.path} is incomplete: {len(missing)} of the {len(idx)} selected frames are not "
               f"committed (first {int(missing[0])})")
        if not allow_incomplete:
            raise StoreError(msg + "; finish `geo3d precompute`, or pass --allow-incomplete to export only the "
                             "committed frames")
        idx = idx[committed]
    if len(idx) == 0:
        raise Geo3dError("the selection holds no frames: check --suite / --frames")
    return Selection(idx, {"suite": suite, "frames": frames, "allow_incomplete": allow_incomplete})


def _dataset_ranges(dataset: dict[str, Any]) -> list[tuple[int, int]]:
    """Global-index range of each dataset of the store's mixture (datasets are contiguous, in order)."""
    out, start = [], 0
    for d in dataset.get("datasets", []):
        out.append((start, start + int(d["num_frames"])))
        start += int(d["num_frames"])
    return out


def _runs(frames: np.ndarray, shard_frames: int) -> Iterator[np.ndarray]:
    """Selected global indices grouped by store shard (each group is read with one zarr slice)."""
    shard = frames // shard_frames
    cuts = np.flatnonzero(np.diff(shard)) + 1
    yield from np.split(frames, cuts)


def store_index(arrays: dict[str, Any]) -> dict[str, np.ndarray]:
    """The store's per-frame index arrays (N x 4-8 bytes each: small, read once)."""
    return {k: np.asarray(arrays[k][:]) for k in (*L.INT_INDEX, L.CONTENT_ID, L.CHECKSUM)}


def read_blocks(store: Path, arrays: dict[str, Any], index: dict[str, np.ndarray], sel: Selection,
                shard_frames: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """(uint16 bits [n,V,T,D], index arrays) per shard of the selection, checksums verified against the store."""
    for g in _runs(sel.frames, shard_frames):
        lo, hi = int(g[0]), int(g[-1]) + 1
        bits = np.asarray(arrays[L.TOKENS][lo:hi])[g - lo]
        bad = np.flatnonzero(frame_checksums(bits) != index[L.CHECKSUM][g])
        if len(bad):
            raise StoreError(f"store {store}: frames {g[bad][:10].tolist()} fail their checksum; run "
                             f"`geo3d verify-cache {store}` (nothing was exported)")
        yield bits, {"global_index": g, **{k: index[k][g] for k in (*L.INT_INDEX, L.CONTENT_ID, L.CHECKSUM)}}


def export_metadata(store: Path, meta: dict[str, Any], sel: Selection, fmt: str) -> dict[str, Any]:
    """What the export holds and how it was made (embedded in every format)."""
    spec = meta["spec"]
    return {"export_version": EXPORT_VERSION, "format": fmt, "store": str(store.resolve()),
            "frames": int(len(sel.frames)), "frame_shape": list(meta["shape"][1:]), "dtype": "bfloat16",
            "checksum": meta["checksum"], "selection": sel.request, "encoder": spec["encoder"],
            "preprocessing": spec["preprocessing"], "dataset": spec["dataset"], "store_metadata": meta,
            "created_utc": utc_now(), "provenance": provenance()}


# ---- the writers: one function per format, each (blocks, meta, tmp_path) -> None ----------------------
def _write_hdf5(blocks: Iterator, meta: dict[str, Any], out: Path, progress: Callable[[int], None]) -> None:
    n, shape = meta["frames"], meta["frame_shape"]
    with h5py.File(out, "w") as h:
        h.attrs["geo3d_export"] = json.dumps(meta)
        tok = h.create_dataset("tokens", shape=(n, *shape), dtype="<u2", chunks=(1, *shape))
        tok.attrs["dtype"] = "bfloat16"
        tok.attrs["storage"] = "uint16 bit patterns of bfloat16 values: view, never cast"
        idx = {k: h.create_dataset(f"index/{k}", shape=(n,), dtype=_index_dtype(k)) for k in INDEX_FIELDS}
        pos = 0
        for bits, index in blocks:
            tok[pos:pos + len(bits)] = bits
            for k in INDEX_FIELDS:
                idx[k][pos:pos + len(bits)] = index[k]
            pos += len(bits)
            progress(len(bits))


def _write_npy(blocks: Iterator, meta: dict[str, Any], out: Path, progress: Callable[[int], None]) -> None:
    out.mkdir()
    n, shape = meta["frames"], tuple(meta["frame_shape"])
    (out / "metadata.json").write_text(json.dumps(meta, indent=1))
    index: dict[str, list[np.ndarray]] = {k: [] for k in INDEX_FIELDS}
    with open(out / "tokens.npy", "wb") as f:  # header, then raw rows appended: constant memory
        np.lib.format.write_array_header_1_0(f, {"descr": "<u2", "fortran_order": False, "shape": (n, *shape)})
        for bits, idx in blocks:
            f.write(np.ascontiguousarray(bits, dtype="<u2").tobytes())
            for k in INDEX_FIELDS:
                index[k].append(idx[k])
            progress(len(bits))
    (out / "index").mkdir()
    for k, parts in index.items():  # N x 8 bytes per field: small next to the tokens
        np.save(out / "index" / f"{k}.npy", np.concatenate(parts).astype(_index_dtype(k)))


def _write_pt(blocks: Iterator, meta: dict[str, Any], out: Path, progress: Callable[[int], None]) -> None:
    out.mkdir()
    (out / "metadata.json").write_text(json.dumps(meta, indent=1))
    files = []
    for j, (bits, idx) in enumerate(blocks):  # one torch file per store shard: real torch.bfloat16 tensors
        name = f"part-{j:06d}.pt"
        torch.save({"tokens": bits_to_bf16(np.ascontiguousarray(bits)),
                    **{k: torch.from_numpy(_pt_index(k, idx[k])) for k in INDEX_FIELDS}}, out / name)
        files.append({"file": name, "frames": int(len(bits)), "first_global_index": int(idx["global_index"][0])})
        progress(len(bits))
    (out / "parts.json").write_text(json.dumps(files, indent=1))


WRITERS: dict[str, Callable[..., None]] = {"hdf5": _write_hdf5, "npy": _write_npy, "pt": _write_pt}


def _pt_index(key: str, values: np.ndarray) -> np.ndarray:
    """torch has few uint64 ops: the 64-bit ids are kept as int64 bit patterns (view back as uint64)."""
    v = np.asarray(values)
    return v.astype(np.uint64).view(np.int64) if key in (L.CONTENT_ID, L.CHECKSUM) else v.astype(np.int64)


def _index_dtype(key: str) -> str:
    return {"global_index": "<i8", L.CONTENT_ID: "<u8", L.CHECKSUM: "<u8"}.get(key, "<i4")


def _fsync_tree(path: Path) -> None:
    """Every file of the output on disk before it is verified and published."""
    for p in [path] if path.is_file() else sorted(q for q in path.rglob("*") if q.is_file()):
        with open(p, "rb+") as f:
            os.fsync(f.fileno())


# ---- reading an export back (verification, tests, users) ---------------------------------------------
def read_export(path: Path, fmt: str) -> tuple[dict[str, Any], Iterator[np.ndarray], dict[str, np.ndarray]]:
    """(metadata, iterator of uint16 token blocks, index arrays) of an export, streamed block by block."""
    if fmt == "hdf5":
        with h5py.File(path, "r") as h:
            meta = json.loads(h.attrs["geo3d_export"])
            index = {k: np.asarray(h[f"index/{k}"][:]) for k in INDEX_FIELDS}

        def blocks() -> Iterator[np.ndarray]:
            with h5py.File(path, "r") as h:
                for lo in range(0, len(h["tokens"]), 64):
                    yield np.asarray(h["tokens"][lo:lo + 64])
        return meta, blocks(), index
    meta = json.loads((path / "metadata.json").read_text())
    if fmt == "npy":
        index = {k: np.load(path / "index" / f"{k}.npy") for k in INDEX_FIELDS}
        return meta, _npy_blocks(path / "tokens.npy"), index

    parts = json.loads((path / "parts.json").read_text())  # parts are memory-mapped: pages go with each part
    index = {k: [] for k in INDEX_FIELDS}
    for p in parts:
        d = torch.load(path / p["file"], weights_only=True, mmap=True)
        for k in INDEX_FIELDS:
            v = d[k].numpy()
            index[k].append(v.view(np.uint64) if k in (L.CONTENT_ID, L.CHECKSUM) else v)

    def pt_blocks() -> Iterator[np.ndarray]:
        for p in parts:
            yield torch.load(path / p["file"], weights_only=True, mmap=True)["tokens"].view(torch.uint16).numpy()
    return meta, pt_blocks(), {k: np.concatenate(v) for k, v in index.items()}


def _npy_blocks(path: Path, frames: int = 64) -> Iterator[np.ndarray]:
    """tokens.npy in blocks read with plain file reads (a memory map would keep every page read resident)."""
    with open(path, "rb") as f:
        fmt = np.lib.format
        version = fmt.read_magic(f)
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read_header(f)
        per = int(np.prod(shape[1:])) * dtype.itemsize
        for lo in range(0, shape[0], frames):
            n = min(frames, shape[0] - lo)
            yield np.frombuffer(f.read(n * per), dtype=dtype).reshape(n, *shape[1:])


def verify_export(path: Path, fmt: str, sel: Selection, store_idx: dict[str, np.ndarray]) -> None:
    """Read the written export back: every frame's checksum and every index entry must equal the store's."""
    meta, blocks, index = read_export(path, fmt)
    if meta.get("frames") != len(sel.frames):
        raise StoreError(f"export {path} verification failed: metadata says {meta.get('frames')} frames, "
                         f"{len(sel.frames)} were written")
    for k in INDEX_FIELDS:
        want = sel.frames if k == "global_index" else store_idx[k][sel.frames]
        if not np.array_equal(np.asarray(index[k]).astype(np.int64), np.asarray(want).astype(np.int64)):
            raise StoreError(f"export {path} verification failed: index/{k} differs from the store")
    pos = 0
    for bits in blocks:
        want = store_idx[L.CHECKSUM][sel.frames[pos:pos + len(bits)]]
        bad = np.flatnonzero(frame_checksums(bits) != want)
        if len(bad):
            raise StoreError(f"export {path} verification failed: frames {(pos + bad[:10]).tolist()} of the "
                             "export differ from the store (disk or filesystem error?); nothing was published")
        pos += len(bits)
    if pos != len(sel.frames):
        raise StoreError(f"export {path} verification failed: {pos} token frames read back, {len(sel.frames)} expected")


def publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the verified temp output into place atomically; an existing PATH is replaced only on request."""
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise Geo3dError(f"{out} exists; pass --overwrite to replace it, or choose another --out")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        os.replace(tmp, out)
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_export(blocks: Iterator, meta: dict[str, Any], tmp: Path, fmt: str,
                 progress: Callable[[int], None]) -> None:
    """The one place an export's bytes are written (storage-fault handling wraps this function)."""
    WRITERS[fmt](blocks, meta, tmp, progress)


def run_export(store: Path, fmt: str, out: Path, suite: str | None = None, frames: str | None = None,
               allow_incomplete: bool = False, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Select, stream, write to a temp name, verify, publish. Returns a summary for the CLI."""
    if fmt not in FORMATS:
        raise Geo3dError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise Geo3dError(f"{out} exists; pass --overwrite to replace it, or choose another --out")
    reader = FeatureReader(store)
    sel = select_frames(reader, suite, frames, allow_incomplete)
    meta = export_metadata(Path(store), read_metadata(store), sel, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    bar = tqdm(total=len(sel.frames), unit="frame", desc=f"export {fmt}", disable=not progress)
    arrays = open_arrays(Path(store), mode="r")
    index = store_index(arrays)
    try:
        blocks = read_blocks(Path(store), arrays, index, sel, reader.spec.shard_frames)
        write_export(blocks, meta, tmp, fmt, bar.update)
        bar.close()
        _fsync_tree(tmp)
        verify_export(tmp, fmt, sel, index)
        publish(tmp, out, overwrite)
    finally:
        bar.close()
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    return {"out": str(out), "format": fmt, "frames": int(len(sel.frames)),
            "encoder": meta["encoder"].get("name"), "verified": "per-frame sha256/64 checksums + index"}
