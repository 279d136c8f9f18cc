"""Policy weights as safetensors, in the transformers layout: `model.safetensors`, or above `max_shard_size`
`model-00001-of-0000N.safetensors` + `model.safetensors.index.json` ({"metadata": {"total_size"}, "weight_map"}).

Tied parameters (Qwen2.5-VL-3B ties lm_head to the input embeddings) share storage, which safetensors refuses
to write twice: each group is written once under its first name; the others are listed in the index metadata
("tied") and come back by the model's own tying when the weights are loaded into it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from geo3d.core.errors import Geo3dError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
PATTERN = "model{suffix}.safetensors"


def _dedupe_tied(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors with one name per storage, {dropped alias: kept name})."""
    kept: dict[str, torch.Tensor] = {}
    by_storage: dict[tuple, str] = {}
    tied: dict[str, str] = {}
    for name in state_dict:  # module order: the embedding is kept, lm_head (registered later) becomes the alias
        t = state_dict[name]
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if t.numel() and key in by_storage:
            tied[name] = by_storage[key]
            continue
        by_storage[key] = name
        kept[name] = t.detach().to("cpu").contiguous()
    return kept, tied


def save_weights(state_dict: Mapping[str, torch.Tensor], directory: str | Path,
                 max_shard_size: int | str = "5GB") -> dict[str, str]:
    """Write the weights into `directory` (single file or shards + index); returns the tied aliases."""
    d = Path(directory)
    tensors, tied = _dedupe_tied(state_dict)
    split = split_torch_state_dict_into_shards(tensors, filename_pattern=PATTERN, max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        save_file({n: tensors[n] for n in names}, str(d / filename), metadata={"format": "pt"})
    if split.is_sharded:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total, "tied": tied}, "weight_map": split.tensor_to_filename}
        (d / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
    elif tied:
        (d / "tied_weights.json").write_text(json.dumps(tied, indent=2, sort_keys=True))
    return tied


def weight_files(directory: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint, checked present (a missing shard is named)."""
    d = Path(directory)
    if (d / INDEX).is_file():
        names = sorted(set(json.loads((d / INDEX).read_text())["weight_map"].values()))
        files = [d / n for n in names]
    elif (d / SINGLE).is_file():
        files = [d / SINGLE]
    else:
        raise Geo3dError(f"{d} holds no {SINGLE} or {INDEX}; pass a checkpoint directory written by geo3d train")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise Geo3dError(f"checkpoint {d} is missing weight shard(s) {missing}; copy the whole checkpoint directory")
    return files


def tied_aliases(directory: str | Path) -> dict[str, str]:
    d = Path(directory)
    if (d / INDEX).is_file():
        return dict(json.loads((d / INDEX).read_text())["metadata"].get("tied", {}))
    path = d / "tied_weights.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def load_weights(directory: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint (tied aliases excluded), on `device`."""
    out: dict[str, torch.Tensor] = {}
    for f in weight_files(directory):
        try:
            out.update(load_file(str(f), device=str(device)))
        except (SafetensorError, OSError) as e:
            raise Geo3dError(f"cannot read {f}: {e}; the file is truncated or corrupt, copy it again") from e
    return out


def load_into(module: torch.nn.Module, directory: str | Path, device: str | torch.device = "cpu") -> None:
    """Load a checkpoint's weights into `module` strictly (only tied aliases may be absent from the files)."""
    weights = load_weights(directory, device)
    missing, unexpected = module.load_state_dict(weights, strict=False)
    missing = [k for k in missing if k not in tied_aliases(directory)]
    if missing or unexpected:
        raise Geo3dError(f"checkpoint {directory} does not fit the model its config builds: missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]}")
