"""Shared CLI plumbing: turning Geo3dError into a clean message + exit code, and building a run's config."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

import typer
from omegaconf import DictConfig

from geo3d.config import ConfigError, load_config, merge_overrides, set_if_given
from geo3d.errors import Geo3dError

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Print user-facing errors as one `error: ...` line on stderr and exit non-zero, without a traceback."""

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

    return wrapper  # type: ignore[return-value]


def build_config(defaults: Iterable[str], config: Iterable[Path] | None, overrides: Iterable[str] | None,
                 flags: Mapping[str, Any] | None = None) -> DictConfig:
    """defaults YAML < --config files < explicit flags (dotted keys) < positional `key=value` overrides."""
    cfg = load_config([*defaults, *(config or [])])
    for key, value in (flags or {}).items():
        set_if_given(cfg, key, value)
    return merge_overrides(cfg, overrides or [])


CONFIG_OPTION = typer.Option(None, "--config", "-c", help="Extra YAML config(s), merged after the defaults.")
OVERRIDES_ARG = typer.Argument(None, help="Config overrides as key=value (dotlist), applied last.",
                               show_default=False)
