"""Verb module (being built)."""

from geo3d.errors import Geo3dError


def demo() -> None:
    raise Geo3dError("'demo' is not built yet")
