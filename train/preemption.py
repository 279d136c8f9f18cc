"""Cluster preemption: SIGTERM / SIGUSR1 ask the run to checkpoint and leave, never to die mid-write.

SLURM sends SIGTERM at `scancel`/preemption (and SIGUSR1 when the job uses `--signal=USR1@<secs>`).
The handler only sets a flag; the trainer finishes its current optimizer step, writes a full resume
checkpoint, and exits with PREEMPTED_EXIT_CODE so a wrapper (the sbatch template) knows to requeue.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

# EX_TEMPFAIL (sysexits.h): "temporary failure, the user is invited to retry". The run saved a resume
# checkpoint; re-running the same command with --resume continues it exactly.
PREEMPTED_EXIT_CODE = 75

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionFlag:
    """Installs handlers for PREEMPTION_SIGNALS (main thread only) and records the first signal received."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> "PreemptionFlag":
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread (e.g. under a test runner thread)
        for sig in PREEMPTION_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None
