"""How `geo3d train` composes its config, and where a run lives.

Through the one builder every verb uses (geo3d.core.cliutil.build_config): configs/data.yaml <
configs/model/<model_config>.yaml < configs/preset/<preset>.yaml < configs/train/default.yaml <
configs/train/demo.yaml (the demo preset: only for `--suite demo` without any --config, and announced on
stderr) < --config files < explicit flags < positional key=value overrides. `model_config` and `preset`
(fork | geo3d) are read from the same layers first, so `model_config=tiny` or `preset=geo3d` chooses them.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Iterable, Mapping

from omegaconf import DictConfig, OmegaConf

from geo3d.core.cliutil import MODEL_CONFIG_KEY, build_config
from geo3d.core.config import ConfigError, load_config
from geo3d.core.config_schema import DATA_RULES, Float, Int, OneOf, Rule, Schema, Str
from geo3d.policy.configuration_policy import PolicyConfig, full_model_section  # torch-free

DATA_DEFAULTS = "data.yaml"
TRAIN_DEFAULTS = "train/default.yaml"
DEMO_PRESET = "train/demo.yaml"

# CLI flag -> config key it sets (None = flag not given, the config value stands).
FLAG_KEYS = {
    "compressor": "model.compressor.type",
    "suite": "data.suite",
    "data_root": "data.data_root",
    "store": "train.store",
    "tap": "train.tap",
    "out": "train.out_dir",
    "max_steps": "train.max_steps",
    "seed": "train.seed",
}


FLAG_LABELS = {key: "--" + flag.replace("_", "-") for flag, key in FLAG_KEYS.items()}

# Types and ranges configs/train/default.yaml's defaults cannot say (null defaults, bounds, choices); every other
# key must keep its default's type. The `model` section's defaults and checks are PolicyConfig's.
RULES: dict[str, Rule] = {
    **DATA_RULES,
    "preset": Str(null=True),
    "train.out_dir": Str(null=True), "train.store": Str(null=True), "train.tap": Str(null=True),
    "train.seed": Int(min=0),
    "train.per_device_batch_size": Int(min=1), "train.grad_accum_steps": Int(min=1),
    "train.max_steps": Int(min=1), "train.save_interval": Int(min=1), "train.log_interval": Int(min=1),
    "train.keep_last": Int(min=1, null=True),
    "train.lr.*": Float(min=0),
    "train.optimizer.eps": Float(min=0), "train.optimizer.weight_decay": Float(min=0),
    "train.schedule.warmup_steps": Int(min=0), "train.schedule.min_lr": Float(min=0),
    "train.max_grad_norm": Float(min=0),
    "train.mixed_precision": OneOf("auto", "no", "bf16", "fp16"),
    "train.ema.decay": Float(min=0, max=1),
    "train.num_workers": Int(min=0), "train.prefetch_factor": Int(min=1),
    "train.pin_memory": OneOf("auto", also=("bool",)),
    "train.checkpoint.max_shard_size": Rule(("str", "int")),
    "train.store_check_frames": Int(min=0),
    "train.wandb.mode": OneOf("offline", "online", "disabled"),
    "train.wandb.entity": Str(null=True),
}


@functools.lru_cache(maxsize=None)
def config_schema() -> Schema:
    """`geo3d train`'s keys: configs/data.yaml + configs/train/default.yaml, and `model` from PolicyConfig."""
    return Schema("train", [DATA_DEFAULTS, TRAIN_DEFAULTS], sections={"model": dataclasses.asdict(PolicyConfig())},
                  rules=RULES)


def uses_demo_preset(configs: list[Path], flags: Mapping[str, Any]) -> bool:
    """The one mode switch of composition: `--suite demo` without any --config adds configs/train/demo.yaml
    (`geo3d train` announces it on stderr)."""
    suite = flags.get("suite")
    return not configs and (suite == "demo" or (suite is None and _default_suite() == "demo"))


DEMO_NOTE = (f"train: --suite demo without --config: using the demo preset configs/{DEMO_PRESET} (tiny model, "
             "CPU-sized batch and steps); pass --config to choose another")


def _layers(configs: list[Path], flags: Mapping[str, Any]) -> list[str | Path]:
    return [TRAIN_DEFAULTS, *([DEMO_PRESET] if uses_demo_preset(configs, flags) else []), *configs]


def _default_suite() -> str | None:
    return OmegaConf.select(load_config([DATA_DEFAULTS]), "data.suite", default=None)


def compose_train_config(configs: Iterable[Path] | None = None, overrides: Iterable[str] | None = None,
                         flags: Mapping[str, Any] | None = None, foreign: Schema | None = None) -> DictConfig:
    """The run's full config (data + model + train), checked key by key (config_schema) before any file is
    read or model built. foreign: another verb's schema whose keys are dropped instead of refused (doctor)."""
    configs, flags = list(configs or []), dict(flags or {})
    layers = _layers(configs, flags)
    cfg = build_config([DATA_DEFAULTS, *layers], None, overrides, {FLAG_KEYS[k]: v for k, v in flags.items()},
                       schema=config_schema(), foreign=foreign, labels=FLAG_LABELS)
    if OmegaConf.select(cfg, MODEL_CONFIG_KEY, default=None) is None:
        raise ConfigError("no model_config set: give one (e.g. model_config=tiny) naming configs/model/<name>.yaml")
    cfg.model = full_model_section(cfg.get("model", {}))  # PolicyConfig's checks (sizes agree, known names)
    return cfg


def check_train_overrides(overrides: Iterable[str], configs: Iterable[str | Path] = ()) -> None:
    """Keys, types and ranges of the --config files and `key=value` overrides meant for a later `geo3d train`
    (geo3d submit checks them at submit time, not hours later on a node)."""
    build_config([DATA_DEFAULTS, TRAIN_DEFAULTS], [Path(c) for c in configs], overrides, schema=config_schema())


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
                  "data.data_root", "train.store",
                  # a speed switch: the same weights, results equal to float rounding; runs made before it existed lack it
                  "model.vlm.patch_embed",
                  # the AdamW kernel (same update to float rounding) and whether the last step is saved
                  "train.optimizer.implementation", "train.save_final")


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
