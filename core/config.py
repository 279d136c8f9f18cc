"""One config system: YAML files in `configs/` merged left to right, then `key=value` dotlist overrides.

Every run writes the resolved result (`resolved_config.yaml`) beside its outputs, so a run can be
reproduced from its own directory. Nothing in code overrides a value the user set.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

# The geo3d package root: the source checkout itself (`pip install -e .` maps the import name geo3d to it), or
# site-packages/geo3d in a wheel install. configs/, demo_data/ and scripts/slurm/ ship at the same relative
# paths in both (pyproject package-data), so every shipped file has one path below this root.
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PACKAGE_ROOT / "configs"
DATA_ROOT_ENV = "GEO3D_DATA_ROOT"


class ConfigError(ValueError):
    """A config file or override is malformed; the message says which and how to fix it."""


def resolve_config_path(name: str | Path) -> Path:
    """Accept a path, or a name relative to `configs/` (with or without `.yaml`)."""
    p = Path(name)
    candidates = [p, CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"]
    if p.parts[:1] == ("configs",):  # `--config configs/train/x.yaml` also works outside a checkout (a wheel)
        candidates.append(CONFIG_DIR / p.relative_to("configs"))
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(f"config file not found: {name} (looked in . and {CONFIG_DIR})")


def load_config(files: Iterable[str | Path] = (), overrides: Iterable[str] = ()) -> DictConfig:
    """Merge YAML `files` in order, then apply dotlist `overrides` such as `train.lr=1e-4`."""
    cfg = OmegaConf.create({})
    for f in files:
        path = resolve_config_path(f)
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        except Exception as e:  # omegaconf raises many types for bad YAML
            raise ConfigError(f"cannot parse config {path}: {e}") from e
    return merge_overrides(cfg, overrides)


def merge_overrides(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """Apply dotlist overrides (`a.b=1`); anything that is not `key=value` is a clear error."""
    overrides = [o for o in overrides if o]
    bad = [o for o in overrides if "=" not in o or o.startswith("-")]
    if bad:
        raise ConfigError(f"overrides must look like key=value (e.g. train.max_steps=100), got: {bad}")
    try:
        return OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))  # type: ignore[return-value]
    except Exception as e:
        raise ConfigError(f"bad override {overrides}: {e}") from e


def set_if_given(cfg: DictConfig, key: str, value: Any) -> None:
    """Apply an explicit CLI flag (None means the flag was not given, so the config value stands)."""
    if value is not None:
        OmegaConf.update(cfg, key, value, force_add=True)


def data_root_from(cfg: DictConfig, key: str = "data.data_root") -> str | None:
    """The data root: config/flag value first, then the GEO3D_DATA_ROOT environment variable."""
    value = OmegaConf.select(cfg, key, default=None)
    return value if value else os.environ.get(DATA_ROOT_ENV) or None


DATA_YAML = "configs/data.yaml"  # marks an argument whose default is configs/data.yaml's value


@functools.lru_cache(maxsize=None)
def data_default(key: str) -> Any:
    """`data.<key>` of configs/data.yaml: the one source of the data-layer defaults (LiberoMixture uses it)."""
    return OmegaConf.select(load_config(["data"]), f"data.{key}", throw_on_missing=True)


def save_resolved(cfg: DictConfig, out_dir: str | Path, name: str = "resolved_config.yaml") -> Path:
    """Write the fully resolved config beside a run's outputs and return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    os.replace(tmp, path)
    return path
