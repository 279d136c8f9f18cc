"""`mapanything`: the real frozen MapAnything (facebookresearch/map-anything) up to its info_sharing features.

Runs encoder -> fusion norm -> info_sharing by hand (the DPT / pose / scale heads never run; an `encoder`-tap-only
pass stops after the fusion norm; taps: geo3d.core.taps), offline:
weights from a local directory (config.json + model.safetensors) loaded with strict=True, and the DINOv2
architecture from the torch hub cache, loaded with `source="local"` and `torch_hub_pretrained=False`: building
the encoder makes no network call at all. Images are normalized as the model's `encoder.data_norm_type` says.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any, Iterator

import torch

from geo3d.core.errors import Geo3dError
from geo3d.core.taps import DEFAULT_TAP, ENCODER, INFO_SHARING, intermediate_layer
from geo3d.encoders.base import GeometryEncoder
from geo3d.encoders.views import check_image_size, norm_mean_std

# uniception 0.1.7 declares unpinned torch/torchvision/torchaudio, so a plain `pip install` of it (or of mapanything,
# or timm) may replace the installed torch and bring a torchvision built for another one. Install without deps.
INSTALL_HINT = ("install it without replacing your torch: pip install --no-deps uniception==0.1.7 timm "
                "'git+https://github.com/facebookresearch/map-anything', then its dependencies: pip install jaxtyping "
                "matplotlib Pillow scikit-learn einops rerun-sdk minio torchmetrics termcolor pyyaml hydra-core "
                "opencv-python-headless huggingface_hub safetensors, and the torchvision built for your torch from "
                "the index your torch came from (precompute/README.md, 'Installing MapAnything')")
WEIGHTS_HINT = ("download facebook/map-anything-apache (Apache 2.0) or facebook/map-anything (CC-BY-NC 4.0) on a "
                "machine with internet, e.g. `huggingface-cli download facebook/map-anything-apache --local-dir DIR`, "
                "and pass --weights DIR")
DINOV2_REPO = ("facebookresearch", "dinov2")


def check_weights_dir(weights: str | Path | None) -> Path:
    """The weights directory must hold config.json and model.safetensors."""
    if not weights:
        raise Geo3dError(f"--weights is required for --encoder mapanything: {WEIGHTS_HINT}")
    path = Path(weights).expanduser()
    missing = [f for f in ("config.json", "model.safetensors") if not (path / f).is_file()]
    if not path.is_dir() or missing:
        what = "is not a directory" if not path.is_dir() else f"lacks {', '.join(missing)}"
        raise Geo3dError(f"MapAnything weights {path} {what}: {WEIGHTS_HINT}")
    return path


def import_mapanything_class() -> type:
    """`mapanything.models.MapAnything`, or a message saying exactly what to install."""
    try:
        return importlib.import_module("mapanything.models").MapAnything
    except ImportError as e:
        if (getattr(e, "name", None) or "").split(".")[0] == "mapanything":
            raise Geo3dError(f"the `mapanything` package is not installed; {INSTALL_HINT}") from e
        # a dependency of mapanything (uniception, hydra, cv2, ...) is missing
        raise Geo3dError(f"`mapanything` is installed but cannot be imported ({e}); {INSTALL_HINT}") from e
    except (RuntimeError, OSError, AttributeError) as e:
        # a dependency built for another torch, e.g. torchvision's "operator torchvision::nms does not exist"
        raise Geo3dError(f"`mapanything` is installed but cannot be imported ({type(e).__name__}: {e}): a "
                         f"dependency does not match the installed torch {torch.__version__}; {INSTALL_HINT}") from e


def dinov2_hub_dir() -> Path | None:
    """The DINOv2 hub code in $TORCH_HOME/hub (main or master branch), or None."""
    hub = Path(torch.hub.get_dir())
    for ref in ("main", "master"):
        d = hub / f"{DINOV2_REPO[0]}_{DINOV2_REPO[1]}_{ref}"
        if (d / "hubconf.py").is_file():
            return d
    return None


def require_dinov2_hub_code() -> Path:
    """MapAnything builds its ViT-g from the DINOv2 hub code; offline it must already be in the hub cache."""
    found = dinov2_hub_dir()
    if found is None:
        hub = Path(torch.hub.get_dir())
        raise Geo3dError(
            f"the DINOv2 torch hub code is missing from {hub} (MapAnything builds its encoder from it; weights are "
            f"not downloaded). On this machine: git clone https://github.com/facebookresearch/dinov2 "
            f"{hub}/facebookresearch_dinov2_main  (or set TORCH_HOME to a directory whose hub/ holds it)")
    return found


@contextlib.contextmanager
def dinov2_hub_code_from_cache(hub_code: Path) -> Iterator[None]:
    """While MapAnything is built, serve uniception's `torch.hub.load("facebookresearch/dinov2", ...)` from the
    cached hub code with `source="local"`.

    With the default `source="github"` and no branch, torch.hub first opens https://github.com/.../tree/main/ to
    pick the default branch, and only falls back to its cache on a URLError: on nodes that drop packets that is
    a hang, not an error. Other torch.hub calls pass through unchanged.
    """
    original = torch.hub.load
    repo = "/".join(DINOV2_REPO)

    def load(repo_or_dir: str, model: str, *args: Any, source: str = "github", **kwargs: Any) -> Any:
        if source == "github" and str(repo_or_dir).split(":")[0] == repo:
            return original(str(hub_code), model, *args, source="local", **kwargs)
        return original(repo_or_dir, model, *args, source=source, **kwargs)

    torch.hub.load = load
    try:
        yield
    finally:
        torch.hub.load = original


def offline_config(config: dict[str, Any]) -> dict[str, Any]:
    """config.json patched for offline loading: no DINOv2 download, no machine-specific checkpoint paths."""
    cfg = copy.deepcopy(config)
    cfg["encoder_config"]["torch_hub_pretrained"] = False

    def drop_paths(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "pretrained_checkpoint_path":
                    node[k] = None
                else:
                    drop_paths(v)

    drop_paths(cfg)
    return cfg


def file_sha256(path: Path, block: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def read_config(weights: Path) -> dict[str, Any]:
    try:
        config = json.loads((weights / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise Geo3dError(f"cannot read {weights / 'config.json'} ({e}): {WEIGHTS_HINT}") from e
    if not isinstance(config, dict) or not isinstance(config.get("encoder_config"), dict):
        raise Geo3dError(f"{weights / 'config.json'} is not a MapAnything config (no encoder_config): {WEIGHTS_HINT}")
    return config


def preflight(weights: str | Path | None) -> Path:
    """Everything that can be checked without building the model: weights dir, package, DINOv2 hub code."""
    path = check_weights_dir(weights)
    import_mapanything_class()
    if read_config(path)["encoder_config"].get("uses_torch_hub", True):
        require_dinov2_hub_code()
    return path


def load_mapanything(weights: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build MapAnything offline from a local weights dir; strict=True so a missing tensor is an error."""
    cls = import_mapanything_class()
    config = offline_config(read_config(weights))
    hub = (dinov2_hub_code_from_cache(require_dinov2_hub_code()) if config["encoder_config"].get("uses_torch_hub", True)
           else contextlib.nullcontext())
    # copies: MapAnything's constructor mutates the dicts it is given (e.g. puts a class into module_args)
    overrides = {k: copy.deepcopy(config[k]) for k in ("encoder_config", "info_sharing_config") if k in config}
    if "pretrained_checkpoint_path" in config:
        overrides["pretrained_checkpoint_path"] = None
    try:
        with hub:
            model = cls.from_pretrained(str(weights), strict=True, local_files_only=True, map_location="cpu",
                                        **overrides)
    except RuntimeError as e:  # strict=True: missing / unexpected keys, or a shape mismatch
        raise Geo3dError(f"MapAnything weights in {weights} do not match the model built from its config.json "
                         f"({str(e)[:400]}); re-download them ({WEIGHTS_HINT})") from e
    except TypeError as e:  # config.json's keys are not this mapanything version's constructor arguments
        raise Geo3dError(f"{weights / 'config.json'} does not fit the installed mapanything "
                         f"{_version('mapanything')} ({e}); use weights released for it ({WEIGHTS_HINT})") from e
    return model, config


def model_norm_type(model: torch.nn.Module) -> str:
    """The image normalization the model's encoder was trained with (`encoder.data_norm_type`), checked known."""
    norm = getattr(getattr(model, "encoder", None), "data_norm_type", None)
    if not isinstance(norm, str):
        raise Geo3dError("the MapAnything model has no encoder.data_norm_type, so the image normalization it "
                         "expects is unknown; this adapter supports mapanything v1.x (uniception 0.1.x)")
    norm_mean_std(norm)  # refuses a type geo3d does not know
    return norm


def intermediate_indices(model: torch.nn.Module) -> tuple[int, ...]:
    """The info_sharing layers whose outputs MapAnything's IFR transformer returns beside its final output, in
    the order it returns them (its depth loop: ascending). v1.1's released config: `indices: [7, 11]`.
    Only an explicit list of non-negative layers is used (uniception also accepts an int = "last n")."""
    indices = getattr(getattr(model, "info_sharing", None), "indices", None)
    if isinstance(indices, (list, tuple)) and all(isinstance(i, int) and i >= 0 for i in indices):
        return tuple(sorted(indices))
    return ()


class MapAnythingEncoder(GeometryEncoder):
    """Frozen MapAnything; tokens = one tap of its forward (default: the per-view final info_sharing features),
    pooled to T per view. Taps: `info_sharing`, `encoder` (the DINOv2 output after `fusion_norm_layer`, i.e. the
    info_sharing input and the DPT head's first input), `info_sharing_<i>` for the IFR's intermediate layers."""

    name = "mapanything"

    def __init__(self, *, weights: str | Path | None, image_size: int, tokens_per_view: int,
                 device: torch.device | str = "cuda", dtype: str = "auto", tap: str = DEFAULT_TAP):
        check_image_size(image_size)  # before the ~20 s model build
        self.weights = check_weights_dir(weights)
        model, self.config = load_mapanything(self.weights)
        self.data_norm_type = model_norm_type(model)
        self._dims = {INFO_SHARING: int(self.config["info_sharing_config"]["module_args"].get("dim", 1536)),
                      ENCODER: int(model.fusion_norm_layer.normalized_shape[0])}  # LayerNorm(enc_embed_dim)
        self._intermediates = intermediate_indices(model)
        super().__init__(model, image_size=image_size, tokens_per_view=tokens_per_view, device=device,
                         dtype=dtype, tap=tap)
        self._fingerprint = {f: file_sha256(self.weights / f) for f in ("config.json", "model.safetensors")}

    def available_taps(self) -> tuple[str, ...]:
        return (INFO_SHARING, ENCODER, *(f"{INFO_SHARING}_{i}" for i in self._intermediates))

    def tap_dim(self, tap: str) -> int:
        return self._dims[ENCODER] if tap == ENCODER else self._dims[INFO_SHARING]

    def tap_features(self, views: list[torch.Tensor], taps: tuple[str, ...]) -> dict[str, list[torch.Tensor]]:
        """encoder (all views, view-major) -> fusion norm (fp32) -> info_sharing with registers + scale token,
        the latter only when an info_sharing tap is asked for.

        Images only: MapAnything's optional geometric inputs are all masked out and add exact zeros before the
        fusion norm, so applying the fusion norm directly gives the same features as its forward().
        """
        m = self.model
        inputs = [{"img": v, "data_norm_type": [self.data_norm_type]} for v in views]
        feats, registers = m._encode_n_views(inputs)
        with torch.autocast(self.device.type, enabled=False):
            fused = [m.fusion_norm_layer(f.float().permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
                     for f in feats]
        out: dict[str, list[torch.Tensor]] = {ENCODER: fused} if ENCODER in taps else {}
        if any(t != ENCODER for t in taps):
            out.update(self._info_sharing_taps(fused, registers, views[0].shape[0], taps))
        return out

    def _info_sharing_taps(self, fused: list[torch.Tensor], registers: Any, batch: int,
                           taps: tuple[str, ...]) -> dict[str, list[torch.Tensor]]:
        from uniception.models.info_sharing.base import MultiViewTransformerInput

        m = self.model
        scale = m.scale_token[None, :, None].expand(batch, -1, 1)
        out = m.info_sharing(MultiViewTransformerInput(features=fused, additional_input_tokens_per_view=registers,
                                                       additional_input_tokens=scale))
        final, intermediates = out if isinstance(out, tuple) else (out, [])  # IFR: (final, [per index])
        got: dict[str, list[torch.Tensor]] = {}
        for t in taps:
            if t == INFO_SHARING:
                got[t] = list(final.features)
            elif (layer := intermediate_layer(t)) is not None:
                got[t] = list(intermediates[self._intermediates.index(layer)].features)
        return got

    def base_identity(self) -> dict[str, Any]:
        combined = hashlib.sha256(json.dumps(self._fingerprint, sort_keys=True).encode()).hexdigest()
        return {"name": self.name, "fingerprint": f"sha256:{combined}",
                "config": {"model_name": self.config.get("name"), "files_sha256": self._fingerprint,
                           "info_sharing_dim": self._dims[INFO_SHARING]}}

    def versions(self) -> dict[str, str | None]:
        """Library versions, recorded per shard (not part of the identity: a patch release may still resume)."""
        return {**super().versions(), "mapanything": _version("mapanything"), "uniception": _version("uniception")}
