"""Verb module (being built)."""

from geo3d.errors import Geo3dError


def train() -> None:
    raise Geo3dError("'train' is not built yet")
