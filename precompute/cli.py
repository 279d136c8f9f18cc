"""Verb module (being built)."""

from geo3d.errors import Geo3dError


def precompute() -> None:
    raise Geo3dError("'precompute' is not built yet")
