"""`geo3d submit` (being built)."""

import typer

submit_app = typer.Typer(no_args_is_help=True)
