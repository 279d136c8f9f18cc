"""The measured orientation of the image path, recorded in stores, checkpoints and eval results.

Before this convention, every consumer turned stored LeRobot frames 180 degrees (probe "rot180") and eval
turned simulator renders twice: models saw upside-down scenes. Artifacts made that way are refused with a
message naming what to recompute, never mixed with upright ones.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from geo3d.core.errors import Geo3dError, StoreError
from geo3d.data.transforms import RAW_RENDER, UPRIGHT, to_model_images

OLD_ORIENTATION = "rot180"  # what the old image path did to frames as stored


def _pattern(size: int = 16) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.stack([(xx * 7 + yy * 3) % 256, (xx * yy) % 256, (xx ^ yy) % 256], -1).astype(np.uint8)
    return np.stack([img, img[::-1]])  # [V=2, H, W, 3]


def _effect(out: np.ndarray, inp: np.ndarray) -> str:
    if np.array_equal(out, inp):
        return "identity"
    return OLD_ORIENTATION if np.array_equal(out, inp[:, ::-1, ::-1]) else "other"


def orientation_probe() -> dict[str, str]:
    """What `to_model_images` does, measured per declared orientation: {"orientation": effect on upright
    (LeRobot) frames as stored, "raw_render": effect on simulator renders}. Today: identity / rot180."""
    p = _pattern()
    return {"orientation": _effect(to_model_images(p, None, UPRIGHT), p),
            "raw_render": _effect(to_model_images(p, None, RAW_RENDER), p)}


def old_orientation(probe: Mapping[str, Any] | None) -> bool:
    """True for a record written by the old image path (stored frames turned 180 degrees) or with none."""
    return not probe or probe.get("orientation") != "identity" or probe.get("raw_render") != OLD_ORIENTATION


def refuse_old_orientation(probe: Mapping[str, Any] | None, what: str, fix: str,
                           error: type[Geo3dError] = Geo3dError) -> None:
    """Raise `error` when `probe` (an artifact's recorded orientation probe) is not today's convention."""
    if old_orientation(probe):
        got = dict(probe) if probe else "no orientation record"
        raise error(f"{what} was made with the old image orientation ({got}): it turned the upright LeRobot "
                    f"frames 180 degrees, so its models saw upside-down images. {fix}")


def refuse_old_store(preprocessing: Mapping[str, Any], store_path: Any) -> None:
    """A features store's tokens came from the old (upside-down) images: they must be recomputed."""
    refuse_old_orientation(dict(preprocessing or {}).get("image_path_probe"), f"features store {store_path}",
                           f"Recompute it: `geo3d precompute --store {store_path} --overwrite` (or a new --store), "
                           "then train on the new store.", StoreError)


def refuse_old_checkpoint(marker: Mapping[str, Any], ckpt_dir: Any) -> None:
    """A checkpoint trained on upside-down images (recorded probe, or none: made before the record existed)."""
    refuse_old_orientation(marker.get("image_orientation"), f"checkpoint {ckpt_dir}",
                           "Retrain it with this version (`geo3d train`, on a store recomputed by `geo3d precompute`).")
