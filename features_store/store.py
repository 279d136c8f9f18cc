"""The writer side of a features store: safe concurrent creation, shard claims, trusted commits.

Protocol for a writer (SLURM array task, local worker):
    store = FeatureStore.open_or_create(path, spec)        # exactly one process initialises, others attach
    for i in store.missing_shards():
        lease = store.try_claim(i)                         # None: another live process owns shard i
        if lease is None:
            continue
        with lease:
            if store.is_committed(i):                      # committed while we were deciding
                continue
            store.write_shard(i, tokens_bf16, index)       # data -> checksums -> fsync -> atomic marker
Only committed shards count. A killed writer leaves no marker (and releases its flock), so the shard is
simply redone. `mark_damaged` removes markers of bad shards so the same loop redoes exactly those.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from geo3d import __version__
from geo3d.core.errors import StoreError
from geo3d.core.provenance import utc_now
from geo3d.features_store import array_layout as L
from geo3d.features_store.fsutil import atomic_write_json, fsync_dir, fsync_tree
from geo3d.features_store.leases import ShardLease, lock_scope_problem, try_lock
from geo3d.features_store.metadata import build_metadata, read_metadata, spec_from_metadata
from geo3d.features_store.shardio import direct_io, write_shard_file
from geo3d.features_store.spec import META_KEY, StoreSpec, attach_view, diff_specs
from geo3d.features_store.token_codec import bf16_to_bits, encode_content_ids, frame_checksums, nonfinite_frames


class FeatureStore:
    """A handle on one store directory. Cheap to create; zarr arrays are opened on first write."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.meta = read_metadata(self.path)
        self.spec = spec_from_metadata(self.meta)
        self._arrays: dict[str, Any] | None = None
        self._leases: dict[int, ShardLease] = {}

    # ---- creation / attaching -------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path) -> "FeatureStore":
        """Attach to an existing store without a spec (verify, mark-damaged, inspection)."""
        return cls(path)

    @classmethod
    def open_or_create(cls, path: str | Path, spec: StoreSpec, overwrite: bool = False) -> "FeatureStore":
        """Create the store, or attach if it exists with an identical spec (else StoreError listing diffs).

        Safe when many processes start at once: the store is built in a private temp directory and
        published with one atomic rename; losers of the race attach to the winner's store.
        `overwrite=True` deletes an existing store first: only for a single interactive process.
        """
        path = Path(path)
        if overwrite and path.exists() and not _empty_dir(path):
            _remove_store(path)
        if not _store_exists(path):
            _create_atomically(path, spec)
        problem = lock_scope_problem(path)
        if problem:
            warnings.warn(f"features store {path}: {problem}", stacklevel=2)
        store = cls(path)
        diffs = diff_specs(attach_view(store.spec.to_dict()), attach_view(spec.to_dict()))
        if diffs:
            raise StoreError(f"store {path} was built with a different configuration; refusing to attach:\n  "
                             + "\n  ".join(diffs)
                             + "\nuse a new store path for this configuration (or overwrite the old store)")
        return store

    # ---- shards ----------------------------------------------------------------------------------
    @property
    def num_shards(self) -> int:
        return self.spec.num_shards

    def shard_range(self, shard: int) -> range:
        self._check_shard(shard)
        start = shard * self.spec.shard_frames
        return range(start, min(start + self.spec.shard_frames, self.spec.frames))

    def committed_shards(self) -> list[int]:
        return committed_shards(self.path)

    def missing_shards(self) -> list[int]:
        done = set(self.committed_shards())
        return [i for i in range(self.num_shards) if i not in done]

    def is_committed(self, shard: int) -> bool:
        return (self.path / L.COMMITS / L.marker_name(shard)).is_file()

    def read_marker(self, shard: int) -> dict[str, Any] | None:
        try:
            return json.loads((self.path / L.COMMITS / L.marker_name(shard)).read_text())
        except FileNotFoundError:
            return None

    def try_claim(self, shard: int) -> ShardLease | None:
        """Claim `shard` for this process without waiting; None if another live process holds it."""
        self._check_shard(shard)
        if shard in self._leases:
            raise StoreError(f"shard {shard} is already claimed by this store handle; release it first")
        lease = try_lock(self.path / L.LOCKS / L.lock_name(shard), shard, on_release=self._forget)
        if lease is not None:
            self._leases[shard] = lease
        return lease

    def _forget(self, lease: ShardLease) -> None:
        if self._leases.get(lease.shard) is lease:
            del self._leases[lease.shard]

    # ---- writing ---------------------------------------------------------------------------------
    def write_shard(self, shard: int, tokens, index: Mapping[str, Any],
                    writer_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write one whole shard and commit it; returns the completion marker.

        tokens: torch.bfloat16 [n, V, T, D] with n = len(shard_range(shard)); index: per-frame arrays
        dataset_id, episode_index, frame_index, content_id. Takes the shard's lease itself when the caller
        holds none; refuses if another process holds it, if the shard is committed, or on NaN/Inf.
        `writer_info` (e.g. {"device": "cuda"}) is recorded in the marker.
        """
        rng = self.shard_range(shard)
        bits = bf16_to_bits(tokens)
        self._check_payload(shard, rng, bits, index)
        own = shard not in self._leases
        if own and self.try_claim(shard) is None:
            raise StoreError(f"shard {shard} is being written by another process (lock "
                             f"{self.path / L.LOCKS / L.lock_name(shard)}); one writer per shard")
        try:
            if self.is_committed(shard):
                raise StoreError(f"shard {shard} of {self.path} is already committed; mark it damaged first "
                                 "(geo3d verify-cache --mark-damaged) to rewrite it")
            try:
                return self._write_and_commit(shard, rng, bits, index, writer_info)
            except BaseException:  # e.g. a full disk mid-shard: the cut files are garbage (no marker), free them
                self._remove_shard_files(shard)
                raise
        finally:
            if own:
                self._leases[shard].release()

    def _check_payload(self, shard: int, rng: range, bits: np.ndarray, index: Mapping[str, Any]) -> None:
        want = (len(rng), *self.spec.frame_shape)
        if tuple(bits.shape) != want:
            raise StoreError(f"shard {shard}: tokens have shape {tuple(bits.shape)}, expected {want} "
                             f"(frames {rng.start}..{rng.stop - 1})")
        missing = [k for k in L.INDEX_KEYS if k not in index]
        if missing:
            raise StoreError(f"shard {shard}: index lacks {missing}; give per-frame {list(L.INDEX_KEYS)}")
        bad_len = {k: len(index[k]) for k in L.INDEX_KEYS if len(index[k]) != len(rng)}
        if bad_len:
            raise StoreError(f"shard {shard}: index arrays must have {len(rng)} entries, got {bad_len}")
        bad = nonfinite_frames(bits)
        if len(bad):
            frames = [rng.start + int(j) for j in bad[:20]]
            raise StoreError(f"shard {shard}: NaN/Inf tokens in frames {frames}; the encoder output is broken "
                             "for these frames, nothing was written")

    def _write_and_commit(self, shard: int, rng: range, bits: np.ndarray, index: Mapping[str, Any],
                          writer_info: Mapping[str, Any] | None) -> dict[str, Any]:
        arrays = self._open_arrays()
        ints = {k: np.asarray(index[k], dtype=np.int64) for k in L.INT_INDEX}
        for k, v in ints.items():
            if v.min(initial=0) < 0 or v.max(initial=0) > np.iinfo(np.int32).max:
                raise StoreError(f"shard {shard}: index '{k}' out of int32 range")
        cid = encode_content_ids(index[L.CONTENT_ID])
        sl = slice(rng.start, rng.stop)
        # The checksum pass runs beside the token write (sha256 and os.write both release the GIL): on 2 cores
        # the shard write no longer waits for it (scripts/bench_store.py).
        with ThreadPoolExecutor(1) as pool:
            pending_sums = pool.submit(frame_checksums, bits)
            self._remove_shard_files(shard)
            if direct_io(self.spec):  # the same bytes zarr would write, without its copies (shardio.py)
                write_shard_file(self.path / L.chunk_files(self.spec, shard)[0], self.spec, bits)
            else:
                arrays[L.TOKENS][sl] = bits  # whole shard at once: no read-modify-write of a shared shard file
            sums = pending_sums.result()
        for k in L.INT_INDEX:
            arrays[k][sl] = ints[k].astype(np.int32)
        arrays[L.CONTENT_ID][sl] = cid
        arrays[L.CHECKSUM][sl] = sums
        self._fsync_shard_files(shard)
        marker = {
            "shard": shard, "start": rng.start, "stop": rng.stop,
            "index_digest": L.index_digest({k: ints[k] for k in L.INT_INDEX}, cid, sums),
            "written_utc": utc_now(), "host": socket.gethostname(), "pid": os.getpid(),
            "tool_version": __version__, "writer": dict(writer_info or {}),
        }
        atomic_write_json(self.path / L.COMMITS / L.marker_name(shard), marker)
        return marker

    def _remove_shard_files(self, shard: int) -> None:
        """zarr's sharding codec reads an existing shard file before rewriting it, so a damaged shard (the
        very thing being redone) would make the rewrite fail. We hold the lease and the shard is uncommitted:
        its old files are garbage."""
        for rel in L.chunk_files(self.spec, shard):
            try:
                os.unlink(self.path / rel)
            except FileNotFoundError:
                pass

    def _fsync_shard_files(self, shard: int) -> None:
        """The data must be durable before the marker that vouches for it."""
        dirs = set()
        for rel in L.chunk_files(self.spec, shard):
            p = self.path / rel
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            dirs.add(p.parent)
        for d in dirs:
            fsync_dir(d)

    def _open_arrays(self) -> dict[str, Any]:
        if self._arrays is None:
            self._arrays = open_arrays(self.path, mode="r+")
        return self._arrays

    # ---- repair ----------------------------------------------------------------------------------
    def mark_damaged(self, shards: Iterable[int], reason: str = "") -> list[int]:
        """Un-commit `shards` (their markers move to damaged/) so the next precompute redoes exactly them."""
        done = []
        for i in sorted(set(int(s) for s in shards)):
            self._check_shard(i)
            marker = self.path / L.COMMITS / L.marker_name(i)
            try:
                old = self.read_marker(i)
            except ValueError:  # a malformed marker is one of the things being cleared
                old = {"unparseable": marker.read_text(errors="replace")[:2000]}
            record = {"shard": i, "reason": reason, "marked_utc": utc_now(), "marker": old}
            stamp = record["marked_utc"].replace(":", "") + "-" + uuid.uuid4().hex[:6]  # never replace an older record
            atomic_write_json(self.path / L.DAMAGED / f"shard-{i:06d}.{stamp}.json", record)
            try:
                os.unlink(marker)
            except FileNotFoundError:
                pass
            done.append(i)
        fsync_dir(self.path / L.COMMITS)
        return done

    def _check_shard(self, shard: int) -> None:
        if not 0 <= int(shard) < self.num_shards:
            raise StoreError(f"shard {shard} out of range: store {self.path} has {self.num_shards} shards")

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, frames={self.spec.frames}, shards={self.num_shards})"


TRIAL_FILE = "trial.json"  # beside zarr.json: the store was (last) written by a trial (precompute --limit-frames)


def trial_record(path: str | Path) -> dict[str, Any] | None:
    """The trial record of an incomplete store cut short on purpose, or None."""
    try:
        return json.loads((Path(path) / TRIAL_FILE).read_text())
    except (OSError, ValueError):
        return None


def set_trial_record(path: str | Path, record: Mapping[str, Any] | None) -> None:
    """Write (or with None remove) the trial record; a full run that completes the store removes it."""
    target = Path(path) / TRIAL_FILE
    if record is None:
        target.unlink(missing_ok=True)
    else:
        atomic_write_json(target, dict(record))


def describe_trial(path: str | Path) -> str | None:
    """One sentence for messages: what the trial encoded and how to complete the store."""
    t = trial_record(path)
    if t is None:
        return None
    shards = f"shards 0..{t.get('shards', 0) - 1} of {t.get('num_shards')}"
    return (f"a trial store (geo3d precompute --limit-frames {t.get('limit_frames')}: {shards}); no run trains on "
            f"it: rerun precompute without --limit-frames to complete it")


def committed_shards(path: Path) -> list[int]:
    """Shard ids with a completion marker (a directory listing: cheap even for thousands of shards)."""
    out = []
    try:
        names = os.listdir(path / L.COMMITS)
    except FileNotFoundError:
        raise StoreError(f"store {path} is damaged: its {L.COMMITS}/ directory is missing") from None
    for name in names:
        if name.startswith("shard-") and name.endswith(".json") and name[6:-5].isdigit():
            out.append(int(name[6:-5]))
    return sorted(out)


def open_arrays(path: Path, mode: str = "r") -> dict[str, Any]:
    zarr = L.require_zarr3()

    group = zarr.open_group(zarr.storage.LocalStore(path, read_only=(mode == "r")), mode=mode, zarr_format=3)
    arrays = {L.TOKENS: group[L.TOKENS]}
    for k in (*L.INT_INDEX, L.CONTENT_ID, L.CHECKSUM):
        arrays[k] = group[L.index_array_name(k)]
    return arrays


def _store_exists(path: Path) -> bool:
    return (path / "zarr.json").is_file()


def _empty_dir(path: Path) -> bool:
    """An empty directory (e.g. made by a job script) is simply filled: nothing to overwrite."""
    return path.is_dir() and next(path.iterdir(), None) is None


def _create_atomically(path: Path, spec: StoreSpec) -> None:
    """Build in a private temp dir, then rename into place; if another process won, just discard ours."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_dir():
        raise StoreError(f"cannot create a store at {path}: a file is in the way")
    tmp = path.parent / f".{path.name}.init-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        L.create_arrays(tmp, spec, {META_KEY: build_metadata(spec)})
        fsync_tree(tmp)
        try:
            os.rename(tmp, path)  # atomic; fails if `path` is a non-empty directory (someone else won)
        except OSError:
            if not _store_exists(path):
                raise StoreError(f"cannot create a store at {path}: the directory exists, is not empty and is "
                                 "not a geo3d store; choose another path") from None
            return
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_store(path: Path) -> None:
    if not _store_exists(path):
        raise StoreError(f"refusing to overwrite {path}: it is not a geo3d features store")
    read_metadata(path)  # refuses stores from a newer schema rather than deleting them blindly
    for lock in sorted((path / L.LOCKS).glob("shard-*.lock")):
        lease = try_lock(lock, -1)
        if lease is None:
            raise StoreError(f"refusing to overwrite {path}: a live process is writing it ({lock} is held); "
                             "stop that run first (with a SLURM array, pass --overwrite to no task but a first, "
                             "single run)")
        lease.release()
    trash = path.parent / f".{path.name}.trash-{uuid.uuid4().hex[:8]}"
    os.rename(path, trash)
    shutil.rmtree(trash)
