"""The one device resolution for every verb (precompute, train, serve, eval): `auto` picks a GPU when there is one."""

from __future__ import annotations

from geo3d.core.errors import Geo3dError


def resolve_device(device: str, local_rank: int | None = None) -> str:
    """`auto` -> cuda:LOCAL_RANK when CUDA is available, else cpu; an explicit cuda device without CUDA is
    refused (a clear error, not a crash deep inside torch); anything else is used as given."""
    import torch

    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise Geo3dError(f"device {device!r} requested but CUDA is not available; use --device cpu or auto")
        return device
    if torch.cuda.is_available():
        return f"cuda:{(local_rank or 0) % torch.cuda.device_count()}"
    return "cpu"
