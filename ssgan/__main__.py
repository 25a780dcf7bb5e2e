"""``python -m ssgan`` works as the ``ssgan`` command."""

from .cli import entry_point

entry_point()
