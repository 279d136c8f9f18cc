"""features_store: the on-disk contract between the stages (Zarr v3 store of bf16 geometry tokens).

Public API (imported lazily so `geo3d.features_store.cli` stays light):
    StoreSpec, StoreLayout, FeatureStore, FeatureReader, ShardLease, verify_store, VerifyReport, SCHEMA_VERSION
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "StoreSpec": "geo3d.features_store.spec",
    "StoreLayout": "geo3d.features_store.spec",
    "SCHEMA_VERSION": "geo3d.features_store.spec",
    "FeatureStore": "geo3d.features_store.store",
    "FeatureReader": "geo3d.features_store.reader",
    "ShardLease": "geo3d.features_store.leases",
    "verify_store": "geo3d.features_store.verify",
    "VerifyReport": "geo3d.features_store.verify",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'geo3d.features_store' has no attribute {name!r}")
