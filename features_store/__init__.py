"""features_store: the on-disk contract between the stages (Zarr v3 store of bf16 geometry tokens).

Public API (imported lazily so `features_store.cli` stays light):
    StoreSpec, StoreLayout, FeatureStore, FeatureReader, ShardLease, verify_store, VerifyReport, SCHEMA_VERSION
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "StoreSpec": "features_store.spec",
    "StoreLayout": "features_store.spec",
    "SCHEMA_VERSION": "features_store.spec",
    "FeatureStore": "features_store.store",
    "FeatureReader": "features_store.reader",
    "ShardLease": "features_store.lease",
    "verify_store": "features_store.verify",
    "VerifyReport": "features_store.verify",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'features_store' has no attribute {name!r}")
