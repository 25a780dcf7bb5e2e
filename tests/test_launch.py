"""ssgan/launch.py: the ``ssgan`` command's entry point exits with ``cli.main``'s code (Ctrl-C while it imports
is tested in tests/test_cli.py, in a fresh interpreter)."""

from __future__ import annotations

import pytest

from ssgan.launch import entry_point


@pytest.mark.parametrize("argv, code", [(["ssgan", "--version"], 0), (["ssgan", "nosuchcommand"], 2)])
def test_the_entry_point_exits_with_mains_code(argv, code, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as stop:
        entry_point()
    assert stop.value.code == code
