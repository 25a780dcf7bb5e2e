"""``python -m ssgan`` works as the ``ssgan`` command."""

from .launch import entry_point

entry_point()
