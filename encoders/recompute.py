"""Rebuild an encoder from its recorded identity (a store's spec, or a checkpoint's `store` record) and check it
against that record: `verify-cache --recompute` re-encodes chosen frames with it (`make_recompute_fn`); serve, eval
and inspect encode live frames with it (`encoder_from_record`, via geo3d.evaluation.policy_handle).

Lives here, not in features_store, so the store package never imports an encoder.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import numpy as np
import torch

from geo3d.core.device import resolve_device
from geo3d.core.errors import StoreError
from geo3d.core.provenance import plain_json, without_runtime
from geo3d.core.taps import tap_of
from geo3d.data.mixture import LiberoMixture
from geo3d.data.orientation import refuse_old_store
from geo3d.encoders.mapanything import MapAnythingEncoder
from geo3d.encoders.tiny import UNHASHED_PREFIX, TinyEncoder
from geo3d.encoders.views import frames_to_model_input

WEIGHTS_ENV = "GEO3D_MAPANYTHING_WEIGHTS"  # where the MapAnything weights are on this machine (not in the store)


def encoder_from_record(encoder: Mapping[str, Any], preprocessing: Mapping[str, Any], tokens_per_view: int,
                        device: str = "auto") -> Any:
    """The GeometryEncoder a store (or a checkpoint trained on it) recorded, rebuilt and checked against the record.

    Used by `verify-cache --recompute` and by evaluation to encode live frames exactly like the training tokens.
    """
    refuse_old_store(preprocessing, "behind these tokens")
    if str(encoder.get("fingerprint", "")).startswith(UNHASHED_PREFIX):
        raise StoreError("these tokens were made by the benchmark stand-in with unhashed random weights "
                         f"(encoder.tiny.init={encoder.get('config', {}).get('init')}): nobody can rebuild that "
                         "encoder, so they cannot be recomputed, verified against it or used for live geometry; "
                         "make the store with a real encoder (or encoder.tiny.init=seeded)")
    encoder = {**encoder, "tap": tap_of(dict(encoder))}  # records made before taps existed: the default tap
    built = _build_from_record(dict(encoder), dict(preprocessing), int(tokens_per_view), resolve_device(device, None))
    for what, mine, theirs in (("encoder identity", built.identity(), without_runtime(encoder)),
                               ("preprocessing", built.preprocessing(), preprocessing)):
        if plain_json(mine) != plain_json(theirs):
            raise StoreError(f"the rebuilt encoder's {what} differs from the recorded one "
                             f"({plain_json(mine)} vs {plain_json(theirs)}): the code or weights changed")
    return built


def _build_from_record(enc: dict[str, Any], pre: dict[str, Any], tokens: int, device: str) -> Any:
    try:
        image_size = int(pre["resize"]["size"][0])
    except (KeyError, TypeError, IndexError) as e:
        raise StoreError(f"the store's preprocessing record lacks {e}; it was not written by this precompute") from e
    if "compute_dtype" not in enc:
        raise StoreError("the store's encoder identity records no compute_dtype (written before geo3d chose the "
                         "compute dtype per device): recompute the store with `geo3d precompute --overwrite`")
    # The recorded dtype, not this machine's `auto`: only the dtype that made the tokens can reproduce them.
    common = dict(image_size=image_size, tokens_per_view=tokens, device=device, dtype=str(enc["compute_dtype"]),
                  tap=str(enc["tap"]))
    if enc["name"] == "tiny":
        cfg = {k: v for k, v in enc["config"].items() if k != "layer"}
        return TinyEncoder(**cfg, **common)
    if enc["name"] == "mapanything":
        weights = os.environ.get(WEIGHTS_ENV)
        if not weights:
            raise StoreError(f"to recompute MapAnything tokens set {WEIGHTS_ENV}=DIR (the weights directory with "
                             "config.json + model.safetensors used to build this store)")
        return MapAnythingEncoder(weights=weights, **common)
    raise StoreError(f"store encoder {enc['name']!r} is unknown to this version of precompute")


def make_recompute_fn(spec: Any, data_root: str | None) -> Callable[[np.ndarray], torch.Tensor]:
    """fn(global frame indices) -> bf16 [k,V,T,D] on CPU, encoded exactly as `geo3d precompute` does.

    Refuses when the rebuilt encoder's identity or preprocessing differs from the store's record.
    `fn.device` / `fn.runtime` tell the verifier where and with which kernels the encoder ran, so it can decide
    whether a bit-exact comparison is meaningful (geo3d.features_store.tolerance).
    """
    encoder = encoder_from_record(spec.encoder, spec.preprocessing, spec.tokens)
    suite = spec.dataset.get("suite")
    mixture = LiberoMixture(suite, data_root, image_size=encoder.image_size)

    def recompute(frames: np.ndarray, batch_size: int = 16) -> torch.Tensor:
        images = np.stack([frames_to_model_input(mixture.read_stored_frames(int(i)), encoder.image_size,
                                                 mixture.frame_orientation(mixture.locate(int(i))[0]))
                           for i in np.asarray(frames).ravel()])
        out = [encoder.encode(torch.from_numpy(images[a:a + batch_size])).cpu()
               for a in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.empty((0, *spec.frame_shape), dtype=torch.bfloat16)

    recompute.device = str(encoder.device)  # type: ignore[attr-defined]
    recompute.runtime = encoder.runtime()  # type: ignore[attr-defined]
    return recompute

