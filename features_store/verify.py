"""Prove a features store complete and true, naming every bad frame.

Levels (each reported with its measured cost per 10k frames):
  store    metadata + schema, array shapes/dtypes/chunking vs spec, every shard committed, every chunk file
           present and decodable, per-frame checksums, NaN/Inf, index digests, index arrays self-consistent
  dataset  (mixture given) frame counts, dataset identity, (dataset, episode, frame) of every frame
  deep     re-decode every source frame and compare content identities (catches a changed dataset)
  recompute  re-run the encoder on K random frames: bit-exact where meaningful, else max |diff| <= atol
           (the rule and its reason: features_store/tolerance.py; the report states which applied)
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from geo3d.core.errors import StoreError
from geo3d.features_store import array_layout as L
from geo3d.features_store.dataset_check import dataset_differences
from geo3d.features_store.metadata import SchemaTooNewError, read_metadata, spec_from_metadata
from geo3d.features_store.spec import StoreSpec
from geo3d.features_store.store import FeatureStore, describe_trial, open_arrays
from geo3d.features_store.token_codec import FILL_BITS, bits_to_bf16, frame_checksums, nonfinite_frames
from geo3d.features_store.tolerance import comparison_rule
from geo3d.features_store.verify_report import VerifyReport

RecomputeFn = Callable[[np.ndarray], Any]  # frame indices -> torch.bfloat16 [k, V, T, D]


def verify_store(path: str | Path, mixture: Any = None, deep: bool = False, recompute: RecomputeFn | None = None,
                 recompute_frames: int = 8, seed: int = 0, recompute_atol: float | None = None,
                 progress: bool = True, workers: int = 2) -> VerifyReport:
    """Check a store; returns a report (faults name frames). Raises StoreError only when the path is not a
    store at all or its schema is newer than this code (usage errors, not faults)."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        read_metadata(path)  # raises the clear "no store here" error
    if deep and mixture is None:
        raise StoreError("--deep needs the dataset: pass --data-root DIR (or set GEO3D_DATA_ROOT)")
    report = VerifyReport(path=str(path))
    store = _open_checked(path, report)
    if store is None:
        return report
    t0 = time.perf_counter()
    arrays = _check_arrays(store, report)
    committed = _check_commits(store, report)
    if arrays is not None:
        index, readable = _check_shards(store, arrays, committed, report, progress, workers)
        _check_index_order(store.spec, index, readable, report)
        report.timed("store", time.perf_counter() - t0, sum(len(store.shard_range(i)) for i in committed))
        if mixture is not None:
            t1 = time.perf_counter()
            aligned = _check_dataset(store.spec, index, readable, mixture, report)
            report.timed("dataset", time.perf_counter() - t1, store.spec.frames)
            if deep and aligned:
                t2 = time.perf_counter()
                n = _check_deep(store.spec, index, readable, mixture, report, progress)
                report.timed("deep", time.perf_counter() - t2, n)
        intact = sorted(set(readable) - set(report.damaged_shards()))  # recompute only frames that read back
        if recompute is not None and intact:
            t3 = time.perf_counter()
            n = _check_recompute(store, arrays, intact, recompute, recompute_frames, seed, recompute_atol, report)
            report.timed("recompute", time.perf_counter() - t3, n)
    trial = describe_trial(path)
    if trial:
        report.notes.append(f"this is {trial}")
    if mixture is None:
        report.notes.append("dataset not checked (no dataset given): frame counts, indices and content ids "
                            "were checked only against the store itself")
    return report


def _open_checked(path: Path, report: VerifyReport) -> FeatureStore | None:
    try:
        meta = read_metadata(path)
        spec = spec_from_metadata(meta)
    except SchemaTooNewError:
        raise
    except StoreError as e:
        report.add("metadata", str(e))
        return None
    except (TypeError, ValueError) as e:  # a spec that fails its own validation
        report.add("metadata", f"store spec is malformed: {e}")
        return None
    store = FeatureStore(path)
    report.frames, report.num_shards = spec.frames, spec.num_shards
    report.header = {"frame_shape": list(spec.frame_shape), "dtype": meta["dtype"],
                     "schema_version": meta["schema_version"], "tool_version": meta.get("tool_version"),
                     "created_utc": meta.get("created_utc"), "layout": spec.to_dict()["layout"],
                     "encoder": f"{spec.encoder.get('name')} (fingerprint {spec.encoder.get('fingerprint')})"}
    return store


def _check_arrays(store: FeatureStore, report: VerifyReport) -> dict[str, Any] | None:
    """zarr array metadata must match the spec: shape, dtype, chunking, sharding."""
    spec, lay = store.spec, store.spec.layout
    try:
        arrays = open_arrays(store.path, mode="r")
    except Exception as e:  # zarr raises many types for missing/corrupt array metadata
        report.add("metadata", f"cannot open the zarr arrays: {type(e).__name__}: {e}")
        return None
    tok = arrays[L.TOKENS]
    want = {"shape": (spec.frames, *spec.frame_shape), "dtype": "uint16",
            "chunks": (lay.chunk_frames, *spec.frame_shape),
            "shards": (lay.shard_frames, *spec.frame_shape) if lay.sharding else None}
    got = {"shape": tuple(tok.shape), "dtype": str(tok.dtype), "chunks": tuple(tok.chunks),
           "shards": tuple(tok.shards) if tok.shards else None}
    bad = [f"tokens {k}: {got[k]} != {want[k]}" for k in want if got[k] != want[k]]
    for k in (*L.INT_INDEX, L.CONTENT_ID, L.CHECKSUM):
        a = arrays[k]
        dtype = "int32" if k in L.INT_INDEX else "uint64"
        if tuple(a.shape) != (spec.frames,) or str(a.dtype) != dtype or tuple(a.chunks) != (lay.shard_frames,):
            bad.append(f"index/{k}: shape {a.shape} dtype {a.dtype} chunks {a.chunks}")
    if bad:
        report.add("metadata", "zarr arrays disagree with the store spec: " + "; ".join(bad))
        return None
    return arrays


def _check_commits(store: FeatureStore, report: VerifyReport) -> list[int]:
    """Committed shards with a well-formed marker; uncommitted ranges are faults naming their frames."""
    committed: list[int] = []
    try:
        listed = store.committed_shards()
    except StoreError as e:
        report.add("metadata", str(e))
        return committed
    for i in listed:
        rng = store.shard_range(i) if 0 <= i < store.num_shards else None
        try:
            marker = store.read_marker(i)
            ok = rng is not None and marker and marker["start"] == rng.start and marker["stop"] == rng.stop
        except (ValueError, KeyError, TypeError):
            ok = False
        if ok:
            committed.append(i)
        else:
            report.add("marker", f"completion marker of shard {i} is malformed or names the wrong frames",
                       rng or (), [i] if rng else ())
    report.committed_shards = len(committed)
    missing = sorted(set(range(store.num_shards)) - set(listed))
    if missing:
        frames = [f for i in missing for f in store.shard_range(i)]
        report.add("uncommitted", f"{len(missing)} shard(s) have no completion marker (precompute unfinished "
                   "or killed): their frames cannot be read", frames, missing)
    return committed


def _check_shards(store: FeatureStore, arrays: dict[str, Any], committed: list[int], report: VerifyReport,
                  progress: bool, workers: int = 2) -> tuple[dict[str, np.ndarray], list[int]]:
    """Per committed shard: chunk files, decode, index digest, checksums, NaN/Inf.

    Shards are checked by `workers` threads (zarr I/O, sha256 and numpy release the GIL), so reading one shard
    overlaps hashing another; faults are merged in shard order. Returns the index arrays and the shards whose
    index could be read (the later checks use only those)."""
    n = store.spec.frames
    index = {k: np.full(n, -1, dtype=np.int64) for k in L.INT_INDEX}
    index[L.CONTENT_ID] = np.zeros(n, dtype=np.uint64)
    readable = []
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="verify") as pool:
        results = pool.map(lambda i: _check_one_shard(store, arrays, i), committed)
        for i, (faults, part) in tqdm(zip(committed, results), total=len(committed), desc="verify shards",
                                      unit="shard", disable=not progress, leave=False):
            report.faults.extend(faults)
            if part is not None:
                r = store.shard_range(i)
                for k in (*L.INT_INDEX, L.CONTENT_ID):
                    index[k][r.start:r.stop] = part[k]
                readable.append(i)
    return index, readable


def _check_one_shard(store: FeatureStore, arrays: dict[str, Any], i: int) -> tuple[list, dict | None]:
    """The faults of shard i, and its index arrays when they could be read."""
    sub = VerifyReport(path=str(store.path))
    rng = store.shard_range(i)
    missing = [rel for rel in L.chunk_files(store.spec, i) if not (store.path / rel).is_file()]
    if missing:
        sub.add("missing_chunk", f"shard {i}: chunk file(s) missing: {', '.join(missing)}", rng, [i])
        return sub.faults, None
    try:
        part = {k: np.asarray(arrays[k][rng.start:rng.stop]) for k in (*L.INT_INDEX, L.CONTENT_ID, L.CHECKSUM)}
    except Exception as e:  # zarr raises many types for undecodable chunks
        sub.add("undecodable", f"shard {i}: index arrays cannot be decoded ({type(e).__name__}: {e})", rng, [i])
        return sub.faults, None
    marker = store.read_marker(i) or {}
    if L.index_digest(part, part[L.CONTENT_ID], part[L.CHECKSUM]) != marker.get("index_digest"):
        sub.add("index", f"shard {i}: index arrays differ from what the writer committed (index chunk corrupted "
                "or rewritten)", rng, [i])
    _check_tokens(arrays[L.TOKENS], i, rng, part[L.CHECKSUM], sub)
    return sub.faults, part


def _check_tokens(tokens: Any, shard: int, rng: range, sums: np.ndarray, report: VerifyReport) -> None:
    try:
        bits = np.asarray(tokens[rng.start:rng.stop])
        bad_decode: list[int] = []
    except Exception as e:  # one bad chunk spoils a whole-shard read: find which frames are unreadable
        bits, bad_decode = _read_frames_one_by_one(tokens, rng)
        report.add("undecodable", f"shard {shard}: stored data cannot be decoded ({type(e).__name__}: {e})",
                   bad_decode, [shard])
    unreadable = set(bad_decode)
    ok = np.array([f not in unreadable for f in rng])
    wrong = np.flatnonzero((frame_checksums(bits) != sums) & ok)
    # A frame that reads back as pure fill value was never stored (an absent chunk inside a shard): zarr
    # returned the fill silently. Name it as missing rather than as a checksum + NaN fault.
    absent = [j for j in wrong if (bits[j] == FILL_BITS).all()]
    if absent:
        report.add("missing_chunk", f"shard {shard}: {len(absent)} frame(s) absent from the shard (read back as "
                   "the fill value)", [rng.start + int(j) for j in absent], [shard])
        ok[absent] = False
    mismatch = [rng.start + int(j) for j in wrong if ok[j]]
    if mismatch:
        report.add("checksum", f"shard {shard}: {len(mismatch)} frame(s) fail their checksum (bytes changed on "
                   "disk)", mismatch, [shard])
    nonfinite = [rng.start + int(j) for j in nonfinite_frames(bits) if ok[j]]
    if nonfinite:
        report.add("nonfinite", f"shard {shard}: {len(nonfinite)} frame(s) hold NaN/Inf", nonfinite, [shard])


def _read_frames_one_by_one(tokens: Any, rng: range) -> tuple[np.ndarray, list[int]]:
    bits = np.zeros((len(rng), *tokens.shape[1:]), dtype=np.uint16)
    bad = []
    for j, f in enumerate(rng):
        try:
            bits[j] = tokens[f]
        except Exception:
            bad.append(f)
    return bits, bad


def _check_index_order(spec: StoreSpec, index: dict[str, np.ndarray], committed: list[int],
                       report: VerifyReport) -> None:
    """Without the dataset: frames must run 0,1,2.. within an episode, episodes/datasets in order."""
    if not committed:
        return
    d, e, f = (index[k] for k in L.INT_INDEX)
    live = _live_mask(spec, committed)
    bad = set(np.flatnonzero(live & ((d < 0) | (e < 0) | (f < 0))).tolist())
    both = live[1:] & live[:-1]
    same_ep = (d[1:] == d[:-1]) & (e[1:] == e[:-1])
    next_ep = (f[1:] == 0) & ((d[1:] > d[:-1]) | ((d[1:] == d[:-1]) & (e[1:] > e[:-1])))
    step_ok = np.where(same_ep, f[1:] == f[:-1] + 1, next_ep)
    bad |= set((np.flatnonzero(both & ~step_ok) + 1).tolist())
    if live[0] and f[0] != 0:
        bad.add(0)
    if bad:
        shards = {b // spec.shard_frames for b in bad}
        report.add("index", f"{len(bad)} frame(s) break the (dataset, episode, frame) order of the global index",
                   sorted(bad), shards)


def _live_mask(spec: StoreSpec, shards: list[int]) -> np.ndarray:
    live = np.zeros(spec.frames, dtype=bool)
    for i in shards:
        live[i * spec.shard_frames:(i + 1) * spec.shard_frames] = True
    return live


def _check_dataset(spec: StoreSpec, index: dict[str, np.ndarray], committed: list[int], mixture: Any,
                   report: VerifyReport) -> bool:
    """Store vs dataset on disk. Returns False when the frame maps cannot be aligned (skip --deep)."""
    aligned = len(mixture) == spec.frames
    for d in dataset_differences(spec, index, _live_mask(spec, committed), mixture):
        if len(d.frames):
            report.add(d.kind, d.message, d.frames, {int(b) // spec.shard_frames for b in d.frames})
        else:
            report.add(d.kind, d.message)
    return aligned


def _check_deep(spec: StoreSpec, index: dict[str, np.ndarray], committed: list[int], mixture: Any,
                report: VerifyReport, progress: bool) -> int:
    """Decode every committed frame of the dataset and compare content identities."""
    done = set(committed)
    bad, checked = [], 0
    spans = [s for s in mixture.episodes()
             if any(f // spec.shard_frames in done for f in range(s.start, s.start + s.length))]
    bar = tqdm(total=sum(s.length for s in spans), desc="verify --deep (decode)", unit="frame",
               disable=not progress, leave=False)
    for s in spans:
        j = -1
        for j, (_frames, cid) in enumerate(mixture.iter_episode(s.dataset_id, s.episode_index)):
            g = s.start + j
            if j < s.length and g // spec.shard_frames in done:
                checked += 1
                if np.uint64(cid) != index[L.CONTENT_ID][g]:
                    bad.append(g)
            bar.update(1)
        if j + 1 != s.length:
            report.add("dataset", f"dataset {s.dataset_id} episode {s.episode_index}: decoded {j + 1} frames, "
                       f"index says {s.length}", range(s.start, s.start + s.length))
    bar.close()
    if bad:
        report.add("content_id", f"{len(bad)} source frame(s) changed since precompute (content identity "
                   "differs): their tokens are stale", bad, {b // spec.shard_frames for b in bad})
    return checked


def _check_recompute(store: FeatureStore, arrays: dict[str, Any], committed: list[int], recompute: RecomputeFn,
                     k: int, seed: int, atol: float | None, report: VerifyReport) -> int:
    """Re-encode K random committed frames and compare with the stored tokens."""
    spec = store.spec
    pool = np.concatenate([np.asarray(store.shard_range(i)) for i in committed])
    frames = np.sort(np.random.default_rng(seed).choice(pool, size=min(k, len(pool)), replace=False))
    fresh = recompute(frames)
    want = (len(frames), *spec.frame_shape)
    if not isinstance(fresh, torch.Tensor) or fresh.dtype != torch.bfloat16 or tuple(fresh.shape) != want:
        raise StoreError(f"recompute returned {getattr(fresh, 'dtype', type(fresh))} "
                         f"{tuple(getattr(fresh, 'shape', ()))}; expected bfloat16 {want}")
    stored = torch.stack([bits_to_bf16(np.asarray(arrays[L.TOKENS][int(f)])) for f in frames])
    same = (fresh.view(torch.int16) == stored.view(torch.int16)).flatten(1).all(dim=1).numpy()
    diff = (fresh.float() - stored.float()).abs().nan_to_num(float("inf")).flatten(1).amax(dim=1).numpy()
    device = str(getattr(recompute, "device", "cpu"))
    writers = [dict((store.read_marker(i) or {}).get("writer") or {}) for i in sorted({int(f) // spec.shard_frames
                                                                                       for f in frames})]
    rule = comparison_rule(device, getattr(recompute, "runtime", None), writers, atol)
    report.recompute = {"frames_checked": len(frames), "frames": frames.tolist(), "device": device,
                        "runtime": getattr(recompute, "runtime", None),
                        "store_devices": sorted({str(w.get("device", "unknown")) for w in writers}),
                        "bit_exact": bool(same.all()), "exact_required": rule.exact,
                        "max_abs_diff": float(diff.max()), "atol": None if rule.exact else rule.atol,
                        "comparison": rule.describe()}
    wrong = frames[~same]
    shards_of = lambda fs: {int(f) // spec.shard_frames for f in fs}  # noqa: E731
    if rule.exact and len(wrong):
        report.add("recompute", f"re-encoding is not bit-exact for {len(wrong)} of {len(frames)} frames "
                   f"(max abs diff {float(diff.max()):.3g}; {rule.why}): stored tokens differ from the encoder's "
                   "output", wrong, shards_of(wrong))
    elif len(wrong):
        over = frames[diff > rule.atol]
        report.notes.append(f"recompute on {device} vs store written on {report.recompute['store_devices']}: "
                            f"{len(wrong)} frame(s) not bit-exact, max abs diff {float(diff.max()):.3g}, "
                            f"{len(over)} over atol {rule.atol:g} (expected across kernels: {rule.why})")
        if len(over):
            report.add("recompute", f"{len(over)} frame(s) differ from a fresh encode by more than atol="
                       f"{rule.atol:g} ({rule.why})", over, shards_of(over))
    return len(frames)
