"""ssgan/hydra_state.py: Hydra's process-wide state is set for a block and restored after it, also when the block
raises."""

from __future__ import annotations

import logging
import os
import sys

import pytest
from hydra.core.global_hydra import GlobalHydra

from ssgan.hydra_state import hydra_globals


def test_argv_environment_and_root_handlers_are_restored_after_an_error():
    argv, handlers = list(sys.argv), list(logging.getLogger().handlers)
    had = os.environ.get("HYDRA_FULL_ERROR")
    with pytest.raises(RuntimeError):
        with hydra_globals(["ssgan", "seed=1"]):
            assert sys.argv == ["ssgan", "seed=1"] and os.environ["HYDRA_FULL_ERROR"] == "1"
            logging.getLogger().addHandler(logging.NullHandler())
            raise RuntimeError("the app failed")
    assert sys.argv == argv and logging.getLogger().handlers == handlers
    assert os.environ.get("HYDRA_FULL_ERROR") == had
    assert not GlobalHydra.instance().is_initialized()


def test_without_argv_only_global_hydra_is_cleared():
    argv = list(sys.argv)
    with hydra_globals():
        assert not GlobalHydra.instance().is_initialized() and sys.argv == argv
