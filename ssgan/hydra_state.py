"""Hydra's global state, set and restored in one place.

Hydra keeps process-wide state: the ``GlobalHydra`` singleton, ``sys.argv`` (an app parses it), the
``HYDRA_FULL_ERROR`` variable (which decides whether its errors reach the caller as exceptions) and handlers it
adds to the root logger (``--info``). ssgan runs Hydra inside a longer-lived process (the CLI's ``main``, the
tests, a notebook), so every use of Hydra goes through ``hydra_globals``, which leaves that state as it found it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator, Optional, Sequence

from hydra.core.global_hydra import GlobalHydra


@contextlib.contextmanager
def hydra_globals(argv: Optional[Sequence[str]] = None) -> Iterator[None]:
    """A clean ``GlobalHydra`` for the block (``config.compose_dict``); with ``argv`` (a Hydra app about to run,
    ``fit_command``) also ``sys.argv`` set to it, ``HYDRA_FULL_ERROR=1`` (errors come back as exceptions, for
    the caller to report in one line) and the root logger's handlers and level restored afterwards."""
    GlobalHydra.instance().clear()
    if argv is None:
        try:
            yield
        finally:
            GlobalHydra.instance().clear()
        return
    saved_argv, saved_env = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    sys.argv = list(argv)
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        sys.argv = saved_argv
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env
        GlobalHydra.instance().clear()
