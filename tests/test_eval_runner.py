"""The evaluation's stop flag: every preemption signal of geo3d.preemption (SIGTERM, SIGUSR1) asks the episode
loop to stop (no simulator needed); a new evaluation starts with the flag cleared and handlers are restored."""

from __future__ import annotations

import os
import signal

import pytest

from evaluation.runner import STOP, install_stop_handlers, restore_handlers, stopped_by


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signals_set_the_stop_flag_and_handlers_are_restored(sig):
    before = signal.getsignal(sig)
    previous = install_stop_handlers()
    try:
        assert not STOP.is_set()
        os.kill(os.getpid(), sig)
        assert STOP.is_set() and stopped_by() == signal.Signals(sig).name
    finally:
        restore_handlers(previous)
    assert signal.getsignal(sig) is before
    restore_handlers(install_stop_handlers())  # the next evaluation does not inherit the old stop request
    assert not STOP.is_set()
