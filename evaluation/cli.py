"""Verb module (being built)."""

from geo3d.errors import Geo3dError


def serve_cmd() -> None:
    raise Geo3dError("not built yet")


def eval_cmd() -> None:
    raise Geo3dError("not built yet")


def report_cmd() -> None:
    raise Geo3dError("not built yet")
