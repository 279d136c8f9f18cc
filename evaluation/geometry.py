"""The geometry encoder for live frames: a policy with a compressor needs, at every query, the tokens the
frozen encoder would have cached for that frame in stage 1.

The checkpoint records the store its training tokens came from (`checkpoint.json` "store": encoder
identity + preprocessing). precompute rebuilds exactly that encoder and refuses one whose identity or
preprocessing differs (other weights or code would give silently out-of-distribution tokens). This is the
one place evaluation imports `precompute`; `train` never does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from geo3d.core.errors import Geo3dError
from geo3d.encoders.recompute import WEIGHTS_ENV, encoder_from_record


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
