"""Cluster preemption, shared by every long-running verb: a signal asks for a clean stop, never a death mid-write.

SLURM sends SIGTERM on `scancel`/preemption and SIGUSR1 when a job asks for `--signal=USR1@<secs>`. The
handler only records the signal; the running stage stops at its next safe point (precompute commits, train
checkpoints, eval keeps finished episodes) and exits with PREEMPTED_EXIT_CODE, which the sbatch templates
(scripts/slurm/) treat as "requeue me": rerunning the same command resumes.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Iterable

from geo3d.core.errors import Geo3dError

# EX_TEMPFAIL (sysexits.h): "temporary failure, the user is invited to retry".
PREEMPTED_EXIT_CODE = 75
PREEMPTION_SIGNALS = ("SIGTERM", "SIGUSR1")


class Preempted(Geo3dError):
    """Stopped on a preemption signal after saving what was done; rerun the same command to resume."""

    exit_code = PREEMPTED_EXIT_CODE


class PreemptionFlag:
    """Records the first preemption signal received; installs handlers (main thread only), restores them after.

    `announce` (e.g. "precompute: stopping at the next safe point") is printed once when the first signal
    arrives. With SIGINT among the signals, a second Ctrl-C interrupts at once.
    """

    def __init__(self, signals: Iterable[str] = PREEMPTION_SIGNALS, announce: str | None = None) -> None:
        self.signals = tuple(signals)
        self.announce = announce
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def install(self) -> "PreemptionFlag":
        if threading.current_thread() is not threading.main_thread():
            return self  # handlers can only be set from the main thread (e.g. a test runner's worker thread)
        for name in self.signals:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if name == "SIGINT" and self.signal_name == "SIGINT":
            raise KeyboardInterrupt
        if self.signal_name is None:
            self.signal_name = name
            if self.announce:
                print(f"\nreceived {name}: {self.announce}", file=sys.stderr, flush=True)
