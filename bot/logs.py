"""Logging set-up for the bot process, in one place.

Why: operators read these lines in a terminal or ``journalctl``; one format with a timestamp, the level and a
short logger name is enough to follow a start-up and diagnose a failure. discord.py's own loggers go through
the same handler (its default handler is not installed because ``Client.start`` is used, not ``Client.run``).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
_HANDLER_NAME = "atelier"
# Chatty third-party loggers that add nothing at INFO for an operator.
_QUIET = {"discord.gateway": logging.WARNING, "discord.client": logging.WARNING, "PIL": logging.INFO}


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send log records at ``level`` and above to ``stream`` (stderr); calling it again replaces the handler."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    root.addHandler(handler)
    numeric = logging.getLevelName(level.upper())
    root.setLevel(numeric if isinstance(numeric, int) else logging.INFO)
    for name, quiet_level in _QUIET.items():
        # At DEBUG the operator asked for everything; otherwise keep library noise down.
        logging.getLogger(name).setLevel(logging.DEBUG if root.level <= logging.DEBUG else quiet_level)
