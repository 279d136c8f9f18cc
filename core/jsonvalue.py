"""The one JSON normaliser: records (store specs, dataset and encoder identities) are compared as plain JSON values."""

from __future__ import annotations

import json
from typing import Any


def plain_json(value: Any, stringify: bool = False) -> Any:
    """`value` as it reads back from JSON: tuples become lists, keys sorted. With `stringify`, anything JSON
    cannot hold (Path, numpy scalar) becomes its str(); without it, such a value raises TypeError."""
    return json.loads(json.dumps(value, sort_keys=True, default=str if stringify else None))
