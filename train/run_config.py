"""How `geo3d train` composes its config, and where a run lives.

Order (later wins): configs/data.yaml < configs/model/<model_config>.yaml < configs/preset/<preset>.yaml
< configs/train/default.yaml < configs/train/demo.yaml (only for `--suite demo` without any --config)
< --config files < explicit flags < positional key=value overrides. `model_config` names the model file and
`preset` the design preset (fork | geo3d); both are read from the same layers first, so a --config or an
override such as `model_config=tiny` or `preset=geo3d` chooses them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from omegaconf import DictConfig, OmegaConf

from geo3d.config import ConfigError, REPO_ROOT, load_config, merge_overrides, set_if_given

DATA_DEFAULTS = "data.yaml"
TRAIN_DEFAULTS = "train/default.yaml"
DEMO_PRESET = "train/demo.yaml"

# CLI flag -> config key it sets (None = flag not given, the config value stands).
FLAG_KEYS = {
    "compressor": "model.compressor.type",
    "suite": "data.suite",
    "data_root": "data.data_root",
    "store": "train.store",
    "out": "train.out_dir",
    "max_steps": "train.max_steps",
    "seed": "train.seed",
}


def _layers(configs: list[Path], flags: Mapping[str, Any]) -> list[str | Path]:
    suite = flags.get("suite")
    demo = not configs and (suite == "demo" or (suite is None and _default_suite() == "demo"))
    return [TRAIN_DEFAULTS, *([DEMO_PRESET] if demo else []), *configs]


def _default_suite() -> str | None:
    return OmegaConf.select(load_config([DATA_DEFAULTS]), "data.suite", default=None)


def _apply(cfg: DictConfig, flags: Mapping[str, Any], overrides: Iterable[str]) -> DictConfig:
    for name, value in flags.items():
        set_if_given(cfg, FLAG_KEYS[name], value)
    return merge_overrides(cfg, overrides)


def compose_train_config(configs: Iterable[Path] | None = None, overrides: Iterable[str] | None = None,
                         flags: Mapping[str, Any] | None = None) -> DictConfig:
    """The run's full config (data + model + train), before any file is read or model built."""
    configs, overrides, flags = list(configs or []), list(overrides or []), dict(flags or {})
    layers = _layers(configs, flags)
    probe = _apply(load_config([DATA_DEFAULTS, *layers]), flags, overrides)
    model_name = OmegaConf.select(probe, "model_config", default=None)
    if not model_name:
        raise ConfigError("no model_config set: give one (e.g. model_config=tiny) naming configs/model/<name>.yaml")
    model_file = _named_file("model", "model_config", model_name)
    preset = OmegaConf.select(probe, "preset", default=None)
    presets = [_named_file("preset", "preset", preset)] if preset else []
    return _apply(load_config([DATA_DEFAULTS, model_file, *presets, *layers]), flags, overrides)


def _named_file(folder: str, key: str, name: str) -> Path:
    """configs/<folder>/<name>.yaml, or a ConfigError listing the known names."""
    path = REPO_ROOT / "configs" / folder / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (REPO_ROOT / "configs" / folder).glob("*.yaml"))
        raise ConfigError(f"{key}={name!r}: {path} does not exist; known: {known}")
    return path


def run_dir_of(cfg: DictConfig) -> Path:
    """--out if given, else <train.out_root>/<train.run_name>."""
    if cfg.train.out_dir:
        return Path(cfg.train.out_dir)
    return Path(cfg.train.out_root) / str(cfg.train.run_name)


# Keys a resumed run may change. None alters a step already taken; but max_steps is also the end of the cosine
# schedule, so after a changed max_steps the learning rates from the resume point on follow the new length
# (the run is then no longer identical to one started with either length).
RESUME_MUTABLE = ("train.max_steps", "train.save_interval", "train.keep_last", "train.log_interval",
                  "train.num_workers", "train.prefetch_factor", "train.pin_memory", "train.persistent_workers",
                  "train.checkpoint", "train.wandb", "train.out_dir", "train.out_root",
                  "data.data_root", "train.store")


def resume_differences(saved: DictConfig, current: DictConfig) -> list[str]:
    """Keys whose values differ between a run's saved config and the one composed for --resume."""
    a = OmegaConf.to_container(saved, resolve=True)
    b = OmegaConf.to_container(current, resolve=True)
    return [d for d in _diff(a, b, "") if not _mutable(d.split(":", 1)[0])]


def _mutable(key: str) -> bool:
    return any(key == m or key.startswith(m + ".") for m in RESUME_MUTABLE)


def _diff(a: Any, b: Any, prefix: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: run has {a!r}, now {b!r}"]
