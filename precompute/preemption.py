"""SLURM preemption: SIGTERM / SIGUSR1 (and Ctrl-C) ask precompute to stop at a safe point.

The encoder loop polls `requested`; it then finishes the current store shard if that is quick (it will be
committed), or drops it (its lease is released, a later run redoes it), lets the writer commit what is already
encoded, and exits with PREEMPTED_EXIT_CODE. A second Ctrl-C interrupts immediately.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped early on a signal; rerun the same command to resume
SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")


class PreemptionFlag:
    """Installs handlers in the main thread; restores the previous ones on `restore()`."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def install(self) -> "PreemptionFlag":
        for name in SIGNALS:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signal_name == "SIGINT" and name == "SIGINT":
            raise KeyboardInterrupt
        if self.signal_name is None:
            print(f"\nprecompute: received {name}: stopping at the next safe point (current shard is finished "
                  f"if quick, else dropped)", file=sys.stderr, flush=True)
        self.signal_name = self.signal_name or name

    def restore(self) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._previous.clear()
