"""User-facing errors: each says what was wrong and what to do, and maps to a non-zero exit code."""

from __future__ import annotations


class Geo3dError(Exception):
    """Bad input or environment. The CLI prints the message (no traceback) and exits with `exit_code`."""

    exit_code = 2


class DataError(Geo3dError):
    """The dataset on disk is missing, malformed, or inconsistent."""


class StoreError(Geo3dError):
    """A features store is missing, incompatible, or not in the state the operation needs."""
