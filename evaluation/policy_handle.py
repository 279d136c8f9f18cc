"""The one interface evaluation needs from a policy, and the two ways to get one (in-process or remote).

A local policy is `geo3d.policy.pretrained.Policy` (imported inside `load_local_policy`: transformers and the model
code are heavy), so the server and eval loop can be exercised with any object that has `predict_action`. This module
itself imports torch: `build_live_encoder` rebuilds the geometry encoder through geo3d.encoders.recompute.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from omegaconf import OmegaConf

from geo3d.core.device import resolve_device
from geo3d.core.errors import Geo3dError
from geo3d.data.lerobot_layout import ACTION_DIM  # the LIBERO simulator's action space (what an episode can execute)
from geo3d.encoders.recompute import WEIGHTS_ENV, encoder_from_record

# What a policy reports about itself (a local Policy reads them from its checkpoint; RemotePolicy from the server).
POLICY_INFO_KEYS = ("action_horizon", "action_dim", "state_dim", "image_size", "num_views", "compressor",
                    "checkpoint", "step")


@runtime_checkable
class Policy(Protocol):
    """images: uint8 [V,H,W,3] upright (agentview, wrist); state: float [8]; returns unnormalized [8,7]
    actions in the dataset convention (gripper -1 open / +1 close)."""

    def predict_action(self, images: np.ndarray, instruction: str, state: np.ndarray) -> np.ndarray: ...


def load_local_policy(ckpt: str | Path, device: str = "auto", encoder_weights: str | Path | None = None) -> Policy:
    """Load a checkpoint directory (or a run directory's latest checkpoint) into this process, with the
    geometry encoder its training tokens came from when its compressor needs live geometry."""
    from geo3d.policy.pretrained import Policy, read_marker, resolve_checkpoint  # heavy: transformers + the model

    ckpt_dir = resolve_checkpoint(ckpt)
    device = resolve_device(device)
    marker = read_marker(ckpt_dir)
    encoder = None
    if marker.get("compressor", "none") != "none":
        image_size = int(OmegaConf.load(ckpt_dir / "config.yaml").data.image_size)
        encoder = build_live_encoder(marker.get("store"), image_size, device, encoder_weights)
    return Policy.from_pretrained(ckpt_dir, device=device, geometry_encoder=encoder)


def policy_info(policy: Any) -> dict[str, Any]:
    """What a client should know about the served policy (sent on connect and on health requests)."""
    info: dict[str, Any] = {}
    for key in POLICY_INFO_KEYS:
        value = getattr(policy, key, None)
        if isinstance(value, (str, int, float, bool)):
            info[key] = value
    return info


def check_action_chunk(actions: Any) -> np.ndarray:
    """A policy's answer as float32 [H,7]; anything else is a bug worth a clear message."""
    arr = np.asarray(actions, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != ACTION_DIM or arr.shape[0] < 1:
        raise Geo3dError(f"policy returned actions of shape {arr.shape}, expected [H,{ACTION_DIM}]")
    if not np.all(np.isfinite(arr)):
        raise Geo3dError("policy returned non-finite actions (NaN/inf); check the checkpoint and norm stats")
    return arr


# -- the geometry encoder for live frames ------------------------------------------------------------------------
# A policy with a compressor needs, at every query, the tokens the frozen encoder would have cached for that frame
# in stage 1. The checkpoint records the store its training tokens came from (checkpoint.json "store": encoder
# identity + preprocessing); geo3d.encoders rebuilds exactly that encoder and refuses one whose identity or
# preprocessing differs (other weights or code would give silently out-of-distribution tokens).
def build_live_encoder(store: dict[str, Any] | None, image_size: int, device: str,
                       mapanything_weights: str | Path | None = None) -> Any:
    """The encoder that produced the checkpoint's training tokens, checked against its record."""
    if not store or not store.get("encoder") or not store.get("preprocessing"):
        raise Geo3dError("the checkpoint does not record which encoder made its geometry tokens "
                         "(checkpoint.json 'store'); it cannot be evaluated with live geometry")
    size = ((store["preprocessing"].get("resize") or {}).get("size") or [None])[0]
    if size is not None and int(size) != int(image_size):
        raise Geo3dError(f"the checkpoint's tokens were encoded at {size}px but the policy takes {image_size}px "
                         "images: the run's store and data.image_size disagree")

    if mapanything_weights:
        os.environ[WEIGHTS_ENV] = str(mapanything_weights)
    tokens = (store["preprocessing"].get("token_pool") or {}).get("tokens_per_view") or store["shape"][1]
    return encoder_from_record(store["encoder"], store["preprocessing"], int(tokens), device)
