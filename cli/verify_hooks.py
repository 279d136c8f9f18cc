"""What `geo3d verify-cache` needs from the layers above the store, wired by the `geo3d` CLI (the roof).

The store package imports only the core; opening the dataset, rebuilding the encoder (precompute) and reading
precompute's logs happen here, each imported only when a verification needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geo3d.core.errors import Geo3dError


def open_dataset(suite: str, data_root: Path | None) -> Any:
    from geo3d.data.mixture import LiberoMixture

    return LiberoMixture(suite, data_root=data_root)


def make_recompute(spec: Any, data_root: Path | None) -> Any:
    try:
        from geo3d.encoders.recompute import make_recompute_fn
    except ImportError as e:
        raise Geo3dError(f"--recompute needs the precompute package ({e}); install geo3d fully") from None
    return make_recompute_fn(spec, str(data_root) if data_root else None)


def recorded_data_root(store: Path) -> Path | None:
    from geo3d.precompute.run import recorded_data_root as from_precompute_logs

    return from_precompute_logs(store)


def install_verify_hooks() -> None:
    from geo3d.features_store.cli import VerifyHooks, install_hooks

    install_hooks(VerifyHooks(open_dataset=open_dataset, make_recompute=make_recompute,
                              recorded_data_root=recorded_data_root))
