"""SIGINT / SIGTERM / SIGHUP turned into a flag that training, seeds runs and tables check at safe points, so that
a signal never cuts a write short: the run checkpoints and stops with exit code 128 + N (``cli``). SIGHUP (a
closed terminal, a dropped ssh session) is a request to stop like SIGTERM."""

from __future__ import annotations

import signal
import threading
from typing import Dict, Optional


# SIGHUP does not exist on Windows
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class StopSignals:
    """Turn SIGINT / SIGTERM / SIGHUP into a flag checked at safe points (main thread only): between iterations in
    the loop, between seeds and after a table's writes outside it (``table``), so that no write is cut short.

    Guards nest: one entered inside another (a seed's training inside a seeds run) takes over a signal the
    outer one has already received (the seed then stops at its first iteration, checkpointed), and hands its
    own to the outer one on exit."""

    def __init__(self, enabled: bool = True) -> None:
        self.signum: Optional[int] = None
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.previous: Dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if self.enabled:
            for sig in STOP_SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
            if self._outer() is not None:
                self.signum = self._outer().signum
        return self

    def _outer(self) -> Optional["StopSignals"]:
        outer = getattr(self.previous.get(signal.SIGTERM), "__self__", None)
        return outer if isinstance(outer, StopSignals) else None

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        outer = self._outer()
        if outer is not None and outer.signum is None:
            outer.signum = self.signum
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
