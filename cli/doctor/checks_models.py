"""Models on disk: the MapAnything package + DINOv2 hub code + weights dir, and the Qwen2.5-VL directory."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Iterator

from geo3d.cli.doctor.findings import FAIL, NA, OK, WARN, Finding, missing
from geo3d.core.errors import Geo3dError
from geo3d.encoders import mapanything as ma

QWEN_TOKENIZER = ("tokenizer_config.json",)
QWEN_TOKENIZER_ANY = (("tokenizer.json",), ("vocab.json", "merges.txt"))
QWEN_PROCESSOR = ("preprocessor_config.json", "processor_config.json")  # the hub's / newer transformers' name


def check_mapanything(plan: Any) -> Iterator[Finding]:
    need = plan.encoder == "mapanything"
    if not need:
        yield Finding("MapAnything", NA, f"encoder.name={plan.encoder}: not used by this run")
        return
    try:
        ma.import_mapanything_class()
        yield Finding("MapAnything package", OK, f"mapanything {ma._version('mapanything') or '(version unknown)'}")
    except Geo3dError as e:
        yield Finding("MapAnything package", FAIL, str(e).split(";")[0], ma.INSTALL_HINT)
    yield from _check_weights(plan, ma)


def _check_weights(plan: Any, ma: Any) -> Iterator[Finding]:
    try:
        path = ma.check_weights_dir(plan.weights)
        config = ma.read_config(path)
    except Geo3dError as e:
        yield Finding("MapAnything weights", FAIL, str(e).split(":")[0], f"pass --weights DIR; {ma.WEIGHTS_HINT}")
        return
    if config["encoder_config"].get("uses_torch_hub", True):
        hub = ma.dinov2_hub_dir()
        yield (Finding("DINOv2 hub code", OK, str(hub)) if hub else
               Finding("DINOv2 hub code", FAIL, "missing from the torch hub cache",
                       "git clone https://github.com/facebookresearch/dinov2 $TORCH_HOME/hub/facebookresearch_dinov2_main"))
    problem, tensors = safetensors_problem(path / "model.safetensors")
    if problem:
        yield Finding("MapAnything weights", FAIL, problem, ma.WEIGHTS_HINT)
        return
    yield Finding("MapAnything weights", OK, f"{path}: config.json + model.safetensors ({len(tensors)} tensors)")
    yield from _check_fingerprint(plan, ma, path)


def _check_fingerprint(plan: Any, ma: Any, path: Path) -> Iterator[Finding]:
    """Only when a store exists: are these the weights it was built with? (hashes the files: seconds per GB)."""
    meta = plan.store_meta()
    if meta is None:
        yield Finding("weights fingerprint", NA, "no existing store to compare with (precompute records it)")
        return
    recorded = meta.get("spec", {}).get("encoder", {}).get("config", {}).get("files_sha256")
    if not recorded:
        yield Finding("weights fingerprint", NA, f"the store at {plan.store} records no MapAnything file hashes")
        return
    have = {f: ma.file_sha256(path / f) for f in recorded}
    if have == recorded:
        yield Finding("weights fingerprint", OK, f"matches the store at {plan.store}")
    else:
        bad = sorted(f for f in recorded if have.get(f) != recorded[f])
        yield Finding("weights fingerprint", FAIL, f"{bad} differ from those the store at {plan.store} was built with",
                      "pass the weights the store was made with, or a new --store for these weights")


def check_qwen(plan: Any) -> Iterator[Finding]:
    source = plan.vlm_source
    if source == "tiny":
        yield Finding("Qwen2.5-VL", NA, "model.vlm.source=tiny: the built-in tiny VLM, no directory needed")
        return
    need = plan.needs_train
    path = Path(str(source)).expanduser()
    fix = ("huggingface-cli download Qwen/Qwen2.5-VL-3B-Instruct --local-dir DIR (on a machine with internet), then "
           "model.vlm.source=DIR or export GEO3D_QWEN_VL_DIR=DIR")
    if not path.is_dir():
        yield missing("Qwen2.5-VL", need, f"{path} is not a directory", fix)
        return
    yield from _qwen_config(path, need, fix)
    absent = [f for f in QWEN_TOKENIZER if not (path / f).is_file()]
    if absent or not any(all((path / f).is_file() for f in alt) for alt in QWEN_TOKENIZER_ANY):
        yield missing("Qwen2.5-VL tokenizer", need, f"{path} lacks tokenizer files ({absent or 'tokenizer.json'})", fix)
    else:
        yield Finding("Qwen2.5-VL tokenizer", OK, "tokenizer files present")
    found = [f for f in QWEN_PROCESSOR if (path / f).is_file()]
    yield (Finding("Qwen2.5-VL processor", OK, f"{found[0]} present") if found
           else missing("Qwen2.5-VL processor", need, f"{path} lacks {' or '.join(QWEN_PROCESSOR)}", fix))
    yield from _qwen_shards(path, need, fix)


def _qwen_config(path: Path, need: bool, fix: str) -> Iterator[Finding]:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        yield missing("Qwen2.5-VL config", need, f"{path / 'config.json'}: {e}", fix)
        return
    kind = config.get("model_type")
    yield Finding("Qwen2.5-VL config", OK if kind == "qwen2_5_vl" else WARN,
                  f"model_type={kind}, hidden_size={config.get('hidden_size', config.get('text_config', {}).get('hidden_size'))}",
                  "point model.vlm.source at a Qwen2.5-VL checkpoint")


def _qwen_shards(path: Path, need: bool, fix: str) -> Iterator[Finding]:
    """Every shard the index names: present, complete (header vs size), holding the tensors the index puts there."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            yield missing("Qwen2.5-VL weights", need, f"{index} unreadable: {e}", fix)
            return
        shards = sorted(set(weight_map.values()))
    elif (path / "model.safetensors").is_file():
        weight_map, shards = None, ["model.safetensors"]
    else:
        yield missing("Qwen2.5-VL weights", need, f"{path} has no model.safetensors(.index.json)", fix)
        return
    problems = []
    for shard in shards:
        if not (path / shard).is_file():
            problems.append(f"{shard} missing")
            continue
        problem, tensors = safetensors_problem(path / shard)
        if problem:
            problems.append(problem)
        elif weight_map is not None:
            lost = [k for k, v in weight_map.items() if v == shard and k not in tensors]
            if lost:
                problems.append(f"{shard} lacks {len(lost)} tensors the index puts there (e.g. {lost[0]})")
    if problems:
        yield missing("Qwen2.5-VL weights", need, "; ".join(problems), "re-download the missing/broken shard(s): " + fix)
    else:
        yield Finding("Qwen2.5-VL weights", OK, f"{len(shards)} safetensors shard(s), all complete and readable")


# -- is a .safetensors file complete and readable? (its header only: 8-byte length + JSON, no tensor data) --------
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit


def safetensors_problem(path: Path) -> tuple[str | None, set[str]]:
    """(None or what is wrong, tensor names in the header)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path} is {size} bytes: not a safetensors file (truncated)", set()
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                return f"{path}: header length {n} exceeds the file ({size} bytes): truncated or corrupt", set()
            header = json.loads(f.read(n))
            tensors = {k: v for k, v in header.items() if k != "__metadata__"}
            end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
            if size < 8 + n + end:
                return (f"{path} is truncated: {size} bytes, its header describes {8 + n + end} "
                        f"({len(tensors)} tensors)"), set(tensors)
            if end:
                f.seek(8 + n + end - 1)
                f.read(1)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{path}: unreadable safetensors ({type(e).__name__}: {e})", set()
    return None, set(tensors)
