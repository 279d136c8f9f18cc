"""`geo3d leases STORE [--break]`: who holds each shard lock, and breaking the ones whose owner is gone.

Exit codes: 0 no held lease left blocking (after --break: every stale one broken), 1 a held lease remains
(listed with why it was not broken), 2 usage errors.

Imports inside its functions are deliberate: `geo3d --help` imports every verb module (0.4 s so; ~10 s with torch,
transformers and zarr imported at the top: measured on the 2-core Xeon, cli/command.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from geo3d.core.cliutil import handle_errors
from geo3d.core.errors import StoreError


@handle_errors
def leases(
    store: Path = typer.Argument(..., help="Features store whose shard leases to list.", show_default=False),
    break_: bool = typer.Option(False, "--break", help="Break every held lease whose owner is provably gone "
                                "(same host: pid dead; another host: needs --force)."),
    force: bool = typer.Option(False, "--force", help="Also break leases of owners on OTHER hosts (geo3d cannot "
                               "see their processes) once older than --older-than-hours."),
    older_than_hours: float = typer.Option(24.0, "--older-than-hours", help="With --force: minimum age of an "
                                           "other-host lease (longer than any shard write)."),
    shard: Optional[List[int]] = typer.Option(None, "--shard", help="Only these shards (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the statuses as JSON."),
) -> None:
    """List shard leases with their owner (host, pid, claim time); --break frees stale ones."""
    from geo3d.features_store.array_layout import LOCKS
    from geo3d.features_store.leases import break_stale, lease_statuses

    if not (store / LOCKS).is_dir():
        raise StoreError(f"{store} is not a features store (no {LOCKS}/ directory)")
    statuses = lease_statuses(store, list(shard) if shard else None, force, older_than_hours * 3600)
    if break_:
        break_stale(statuses)
    held = [s for s in statuses if s.held and not s.broken]
    if as_json:
        typer.echo(json.dumps([s.to_dict() for s in statuses], indent=2))
    else:
        for s in statuses:
            if s.held or s.broken:
                o = s.owner or {}
                state = "BROKEN" if s.broken else "held"
                typer.echo(f"shard {s.shard}: {state} by {o.get('host', '?')} pid {o.get('pid', '?')} since "
                           f"{o.get('claimed_utc', '?')}: {s.reason}")
        free = sum(not s.held for s in statuses)
        typer.echo(f"{len(statuses)} lock files: {free} free, {sum(s.broken for s in statuses)} broken, "
                   f"{len(held)} held" + ("" if break_ or not held else "; see --break"))
    if held:
        raise typer.Exit(1)
