"""Shared CLI plumbing: turning Geo3dError into a clean message + exit code, and building a run's config."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

import typer
from omegaconf import DictConfig, OmegaConf

from geo3d.core.config import CONFIG_DIR, ConfigError, load_config, merge_overrides, set_if_given
from geo3d.core.config_schema import Schema
from geo3d.core.errors import Geo3dError
from geo3d.core.preemption import INTERRUPTED_EXIT_CODE

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Print user-facing errors as one `error: ...` line on stderr and exit non-zero, without a traceback
    (a Ctrl-C that reaches here: exit 130)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            raise typer.Exit(2) from None
        except Geo3dError as e:
            print(f"error: {e}", file=sys.stderr)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:  # a Ctrl-C no stage handled, or the second one (geo3d.core.preemption)
            print("error: interrupted (Ctrl-C): stopped at once; what was saved before is kept", file=sys.stderr)
            raise typer.Exit(INTERRUPTED_EXIT_CODE) from None

    return wrapper  # type: ignore[return-value]


def build_config(defaults: Sequence[str | Path], config: Iterable[Path] | None, overrides: Iterable[str] | None,
                 flags: Mapping[str, Any] | None = None, *, schema: Schema, foreign: Schema | None = None,
                 labels: Mapping[str, str] | None = None) -> DictConfig:
    """The one config builder every verb uses. Later wins: the schema's class-default sections (e.g. `model`
    from policy/configuration_policy.py) < defaults YAML (data.yaml first) < the named layers
    (configs/model/<model_config>.yaml, then configs/preset/<preset>.yaml, each only when the composed config
    names it; merged right after the first default, below every verb default) < --config files < explicit flags
    (dotted keys) < positional `key=value` overrides. The names are read from the composed layers first, so a
    --config or an override such as `model_config=tiny` or `preset=geo3d` chooses them.

    Then `schema.check`: a key the verb does not define, a value of the wrong type or out of range is a
    ConfigError (exit 2) before the verb does anything; keys only `foreign` defines are dropped (doctor).
    labels: the flag that sets a key ({"precompute.num_shards": "--num-shards"}), named when it was given."""
    defaults, files, overrides = list(defaults), list(config or []), list(overrides or [])
    base = OmegaConf.create(schema.sections)
    cfg = _compose(base, [*defaults, *files], flags, overrides)
    named = [_named_file(folder, key, str(name)) for key, folder in NAMED_LAYERS
             if (name := OmegaConf.select(cfg, key, default=None)) is not None]
    if named:
        cfg = _compose(base, [*defaults[:1], *named, *defaults[1:], *files], flags, overrides)
    given = {k: v for k, v in (labels or {}).items() if (flags or {}).get(k) is not None}  # name flags used
    return schema.check(cfg, foreign, given)


MODEL_CONFIG_KEY = "model_config"
NAMED_LAYERS = ((MODEL_CONFIG_KEY, "model"), ("preset", "preset"))  # key -> configs/<folder>/<value>.yaml


def _compose(base: DictConfig, files: list[str | Path], flags: Mapping[str, Any] | None,
             overrides: list[str]) -> DictConfig:
    cfg: DictConfig = OmegaConf.merge(base, load_config(files))  # type: ignore[assignment]
    for key, value in (flags or {}).items():
        set_if_given(cfg, key, value)
    return merge_overrides(cfg, overrides)


def _named_file(folder: str, key: str, name: str) -> Path:
    """configs/<folder>/<name>.yaml, or a ConfigError listing the known names."""
    path = CONFIG_DIR / folder / f"{name}.yaml"
    if not name or not path.is_file():
        known = sorted(p.stem for p in (CONFIG_DIR / folder).glob("*.yaml"))
        raise ConfigError(f"{key}={name!r}: {path} does not exist; known: {known}")
    return path


CONFIG_OPTION = typer.Option(None, "--config", "-c", help="Extra YAML config(s), merged after the defaults.")
OVERRIDES_ARG = typer.Argument(None, help="Config overrides as key=value (dotlist), applied last.",
                               show_default=False)
