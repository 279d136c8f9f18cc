"""The one signal policy of every long-running verb (precompute, train, eval): a signal asks for a clean stop,
never a death mid-write.

- The scheduler: SLURM sends SIGTERM on `scancel`/preemption and SIGUSR1 when a job asks for
  `--signal=USR1@<secs>`. The stage stops at its next safe point (precompute commits, train checkpoints, eval
  keeps finished episodes) and exits with PREEMPTED_EXIT_CODE (75), which the sbatch templates (scripts/slurm/)
  treat as "requeue me": rerunning the same command resumes.
- The user: Ctrl-C (SIGINT) stops at the same safe point, saving the same way, but exits with
  INTERRUPTED_EXIT_CODE (130 = 128 + SIGINT), so a requeueing wrapper never requeues a user's Ctrl-C. A second
  Ctrl-C stops at once (KeyboardInterrupt; `handle_errors` turns it into one line and exit 130).
The handler only records the signal; the stage decides where it is safe to stop.
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
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C'd command
PREEMPTION_SIGNALS = ("SIGTERM", "SIGUSR1")  # the scheduler's
STOP_SIGNALS = (*PREEMPTION_SIGNALS, "SIGINT")  # every long verb stops cleanly on these


def exit_code_for(signal_name: str | None) -> int:
    """130 after the user's Ctrl-C, else 75 (the scheduler's signals, or a peer rank's stop): requeue me."""
    return INTERRUPTED_EXIT_CODE if signal_name == "SIGINT" else PREEMPTED_EXIT_CODE


def stopped_by(signal_name: str | None) -> str:
    """How the stop reads in messages."""
    return "interrupted by Ctrl-C (SIGINT)" if signal_name == "SIGINT" else f"preempted by {signal_name or 'a peer'}"


class Preempted(Geo3dError):
    """Stopped on a signal after saving what was done; rerun the same command to resume. Exit 75 for the
    scheduler's signals, 130 for Ctrl-C."""

    exit_code = PREEMPTED_EXIT_CODE

    def __init__(self, message: str, signal_name: str | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code_for(signal_name)


class PreemptionFlag:
    """Records the first stop signal received; installs handlers (main thread only), restores them after.

    `announce` (e.g. "precompute stops at the next safe point") is printed once when the first signal
    arrives. With SIGINT among the signals (the default), a Ctrl-C after the first signal interrupts at once.
    """

    def __init__(self, signals: Iterable[str] = STOP_SIGNALS, announce: str | None = None) -> None:
        self.signals = tuple(signals)
        self.announce = announce
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    @property
    def exit_code(self) -> int:
        return exit_code_for(self.signal_name)

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
        if name == "SIGINT" and self.signal_name is not None:
            raise KeyboardInterrupt  # the second Ctrl-C: stop at once
        if self.signal_name is None:
            self.signal_name = name
            if self.announce:
                again = " (Ctrl-C again to stop at once)" if "SIGINT" in self.signals else ""
                print(f"\nreceived {name}: {self.announce}{again}", file=sys.stderr, flush=True)


def ignore_stop_signals(*_: object) -> None:
    """In a helper process (decode process, DataLoader worker): the parent decides when to stop, so the helper
    ignores the stop signals (a Ctrl-C reaches the whole foreground process group). Usable as worker_init_fn."""
    for name in STOP_SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_IGN)
