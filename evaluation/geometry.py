"""The geometry encoder for live frames: a policy with a compressor needs, at every query, the tokens the
frozen encoder would have cached for that frame in stage 1.

The checkpoint records the store its training tokens came from (`checkpoint.json` "store": encoder
identity {name, fingerprint, config} + preprocessing). We rebuild that exact encoder with precompute's own
factory and refuse to run if its fingerprint differs: tokens from another encoder (or other weights) would
be silently out of distribution. (This is the one place evaluation imports `precompute`; `train` never does.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geo3d.errors import Geo3dError


def encoder_config(store: dict[str, Any], mapanything_weights: str | Path | None) -> dict[str, Any]:
    """The `encoder` config section precompute was run with, reconstructed from the recorded identity."""
    ident, prep = store.get("encoder") or {}, store.get("preprocessing") or {}
    name = ident.get("name")
    tokens = (prep.get("token_pool") or {}).get("tokens_per_view") or (store.get("shape") or [0, 0])[1]
    dtype = prep.get("autocast_dtype", "bfloat16")
    if name == "tiny":
        c = ident["config"]
        tiny = {k: c[k] for k in ("width", "depth", "heads", "out_dim", "seed")} | {"dtype": dtype}
        return {"name": "tiny", "tokens_per_view": int(tokens), "tiny": tiny}
    if name == "mapanything":
        if not mapanything_weights:
            raise Geo3dError("this checkpoint was trained on MapAnything tokens: pass --encoder-weights DIR (the "
                             "same weights directory given to `geo3d precompute --weights`)")
        return {"name": "mapanything", "tokens_per_view": int(tokens),
                "mapanything": {"weights": str(mapanything_weights), "dtype": dtype}}
    raise Geo3dError(f"checkpoint's geometry came from encoder {name!r}, which evaluation cannot rebuild "
                     "(known: tiny, mapanything); evaluate with precomputed tokens or retrain on a real store")


def build_live_encoder(store: dict[str, Any] | None, image_size: int, device: str,
                       mapanything_weights: str | Path | None = None) -> Any:
    """The encoder that produced the checkpoint's training tokens, verified by fingerprint."""
    if not store or not store.get("encoder"):
        raise Geo3dError("the checkpoint does not record which encoder made its geometry tokens "
                         "(checkpoint.json 'store'); it cannot be evaluated with live geometry")
    from omegaconf import OmegaConf

    from precompute.encoders import build_encoder

    cfg = OmegaConf.create(encoder_config(store, mapanything_weights))
    size = ((store.get("preprocessing") or {}).get("resize") or {}).get("size", [image_size])[0]
    if int(size) != int(image_size):
        raise Geo3dError(f"the checkpoint's tokens were encoded at {size}px but the policy takes {image_size}px "
                         "images; the run's store and data.image_size disagree")
    encoder = build_encoder(cfg, int(image_size), device)
    want, got = store["encoder"].get("fingerprint"), encoder.identity().get("fingerprint")
    if want != got:
        raise Geo3dError(f"the {cfg.name} encoder built here has fingerprint {got}, the checkpoint was trained on "
                         f"{want}: use the same weights (--encoder-weights) that built the training store")
    return encoder
