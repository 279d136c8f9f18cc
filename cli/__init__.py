"""The roof: the `geo3d` command (command.py assembles every package's verb), `geo3d demo`, `geo3d submit` (SLURM).
Nothing imports this package (an import-linter contract); `python -m geo3d.cli` runs the command.

`main` runs the command importing only the invoked verb; `app` (built on first access) is the full command
with every verb, e.g. for typer's CliRunner.
"""

from typing import Any

from geo3d.cli.command import build_app, main

__all__ = ["app", "build_app", "main"]


def __getattr__(name: str) -> Any:
    if name == "app":
        return build_app()
    raise AttributeError(f"module 'geo3d.cli' has no attribute {name!r}")
