"""Verb module (being built)."""

from geo3d.errors import Geo3dError


def verify_cache() -> None:
    raise Geo3dError("'verify_cache' is not built yet")
