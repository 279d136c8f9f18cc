"""The roof: the `geo3d` command (app.py assembles every package's verb), `geo3d demo`, `geo3d submit` (SLURM).
Nothing imports this package (an import-linter contract); `python -m geo3d.cli` runs the command."""

from geo3d.cli.command import app

__all__ = ["app"]
