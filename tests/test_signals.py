"""ssgan/signals.py: SIGINT / SIGTERM become a flag inside the guard, the previous handlers come back after it,
and nested guards hand a signal on."""

from __future__ import annotations

import os
import signal

from ssgan.signals import StopSignals


def test_a_signal_inside_the_guard_is_a_flag_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as guard:
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.signum == signal.SIGTERM  # the process goes on: the caller stops at a safe point
    assert signal.getsignal(signal.SIGTERM) is before


def test_nested_guards_hand_the_signal_to_the_outer_one():
    with StopSignals() as outer:
        with StopSignals() as inner:
            os.kill(os.getpid(), signal.SIGINT)
        assert inner.signum == signal.SIGINT
    assert outer.signum == signal.SIGINT


def test_a_disabled_guard_leaves_the_handlers_alone():
    before = signal.getsignal(signal.SIGINT)
    with StopSignals(enabled=False) as guard:
        assert signal.getsignal(signal.SIGINT) is before and guard.signum is None
