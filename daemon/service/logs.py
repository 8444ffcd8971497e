"""Logging: one line per event on stderr, which journald collects under systemd.

No ANSI and no timestamps when stderr is not a terminal (journald stamps each line);
a terminal gets a short local time for the person watching.
"""

from __future__ import annotations

import logging
import os
import sys

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


class OneLine(logging.Formatter):
    """Folds newlines (tracebacks included) so each record stays one journal line."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


def setup_logging(level: str | None = None) -> None:
    level = level or os.environ.get("GENRETAGGER_LOG_LEVEL", "info")
    handler = logging.StreamHandler(sys.stderr)
    if sys.stderr.isatty():
        handler.setFormatter(OneLine("%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                                     "%H:%M:%S"))
    else:
        handler.setFormatter(OneLine("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    # Libraries that chat at INFO about their own housekeeping.
    for noisy in ("apscheduler", "watchdog", "waitress", "alembic", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
