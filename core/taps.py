"""Encoder taps: which of the frozen encoder's outputs a features store holds, and where each tap's store lives.

MapAnything's one forward computes several candidate token sets of the same width and patch grid:
- `info_sharing`: the per-view output of the multi-view info_sharing transformer after its final norm (the
  3D tokens geo3d was built for; every store made before taps existed holds these);
- `encoder`: the per-view DINOv2 output after `fusion_norm_layer`, before any exchange between views and
  without MapAnything's 3D training signal (the 2D control);
- `info_sharing_<i>`: an intermediate info_sharing output (layer i, 0-based, normalized by the final norm) the
  model returns anyway (MapAnything v1.1: layers 7 and 11).
The tap is part of what the tokens mean, so it is part of a store's encoder identity (compared on attach,
recorded in checkpoints). Pure python: imported by the store, the stages and the CLI alike.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from geo3d.core.errors import Geo3dError

INFO_SHARING = "info_sharing"
ENCODER = "encoder"
DEFAULT_TAP = INFO_SHARING  # what every store made before taps existed holds
_INTERMEDIATE = re.compile(r"^info_sharing_(\d+)$")
STORE_TAP_SEPARATOR = "@"  # <store>@<tap>.zarr: also how runs are labelled (qformer@encoder)

LAYERS = {
    INFO_SHARING: "info_sharing final (after norm)",
    ENCODER: "encoder after fusion_norm_layer (per view, before info_sharing)",
}


def intermediate_layer(tap: str) -> int | None:
    """The info_sharing layer of an `info_sharing_<i>` tap, else None."""
    m = _INTERMEDIATE.match(tap)
    return int(m.group(1)) if m else None


def layer_description(tap: str) -> str:
    """The `layer` string recorded in the encoder identity's config."""
    layer = intermediate_layer(tap)
    if layer is not None:
        return f"info_sharing layer {layer} (0-based, after the final norm)"
    if tap not in LAYERS:
        raise Geo3dError(f"unknown encoder tap {tap!r}; known: {INFO_SHARING}, {ENCODER}, info_sharing_<layer>")
    return LAYERS[tap]


def parse_taps(taps: Iterable[str] | str | None) -> tuple[str, ...]:
    """`precompute.taps` (a list, or a comma-separated string) as a tuple: non-empty, no repeats, known names."""
    if taps is None or isinstance(taps, str):
        items = [t.strip() for t in (taps or "").split(",") if t.strip()]
    else:
        items = [str(t).strip() for t in taps]
    if not items:
        raise Geo3dError(f"precompute.taps is empty; give at least one, e.g. [{INFO_SHARING}, {ENCODER}]")
    if len(set(items)) != len(items):
        raise Geo3dError(f"precompute.taps repeats a tap: {items}; each tap makes one store")
    for t in items:
        layer_description(t)
    return tuple(items)


def check_available(taps: tuple[str, ...], available: Iterable[str], encoder: str) -> None:
    """Each requested tap must be one the built encoder gives (MapAnything's intermediates depend on its config)."""
    known = list(available)
    unknown = [t for t in taps if t not in known]
    if unknown:
        raise Geo3dError(f"encoder {encoder!r} has no tap {', '.join(map(repr, unknown))}; its taps: "
                         f"{', '.join(known)} (precompute.taps)")


def tap_store_path(store: str | Path, tap: str) -> Path:
    """Where the store of `tap` lives, given `--store PATH`: the default tap (info_sharing) at PATH itself, every
    other tap beside it as `<name>@<tap>.zarr` (or `<name>@<tap>` when PATH has no .zarr suffix). The name depends
    only on (PATH, tap): a run that asks for `encoder` tokens finds them whatever else was precomputed."""
    p = Path(store)
    if tap == DEFAULT_TAP:
        return p
    layer_description(tap)  # refuses an unknown tap name before a path is made of it
    if p.suffix == ".zarr":
        return p.with_name(f"{p.stem}{STORE_TAP_SEPARATOR}{tap}.zarr")
    return p.with_name(f"{p.name}{STORE_TAP_SEPARATOR}{tap}")


def sibling_store(path: str | Path, tap: str, wanted: str) -> Path | None:
    """The store of tap `wanted` made by the same pass as the `tap` store at `path` (None: not named by
    `tap_store_path`, so its siblings cannot be told)."""
    p = Path(path)
    if tap != DEFAULT_TAP:
        suffix = f"{STORE_TAP_SEPARATOR}{tap}"
        if p.name.endswith(suffix + ".zarr"):
            p = p.with_name(p.name[: -len(suffix + ".zarr")] + ".zarr")
        elif p.name.endswith(suffix):
            p = p.with_name(p.name[: -len(suffix)])
        else:
            return None
    return tap_store_path(p, wanted)


def refuse_other_tap(store_tap: str, wanted: str | None, store: str | Path, what: str, *, use: str) -> None:
    """A run (train, verify-cache) that asks for `wanted` tokens must get a store of that tap.

    `use` is how this caller is given another store, `{}` standing for its path: each verb takes its store its own
    way (train: "pass --store {}"; verify-cache takes it as an argument: "run `geo3d verify-cache {}`")."""
    if wanted is None or wanted == store_tap:
        return
    sibling = sibling_store(store, store_tap, wanted)
    hint = f"{use.format(sibling)} (the {wanted} store of the same precompute pass, made with " \
           f"`geo3d precompute --taps {store_tap},{wanted}`)" if sibling else use.format(f"<the {wanted} store>")
    raise Geo3dError(f"store {store} holds {store_tap!r} tokens but {what} asks for {wanted!r}: {hint}, or ask for "
                     f"{store_tap!r}")


def tap_of(encoder_identity: dict | None) -> str | None:
    """The tap recorded in an encoder identity (a store spec's or a checkpoint's); records made before taps
    existed hold the default tap."""
    if not encoder_identity:
        return None
    return str(encoder_identity.get("tap") or DEFAULT_TAP)


def run_label(compressor: str, tap: str | None) -> str:
    """`qformer@info_sharing`; a run that reads no geometry (`none`) has no tap."""
    return compressor if compressor == "none" or not tap else f"{compressor}{STORE_TAP_SEPARATOR}{tap}"


def parse_run_label(label: str) -> tuple[str, str | None]:
    """`qformer@encoder` -> ("qformer", "encoder"); `qformer` -> ("qformer", None: the default tap)."""
    compressor, _, tap = label.partition(STORE_TAP_SEPARATOR)
    if tap:
        layer_description(tap)
    return compressor, (tap or None)
