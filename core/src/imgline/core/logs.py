"""Logging is configured here and nowhere else: one line per event, UTC timestamps."""

from __future__ import annotations

import logging
import sys
import time


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not when configured:
    a handler holding an old stream (replaced and closed by a test harness or a daemonising
    wrapper) would fail on every later record."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # logging must never raise: report the way logging does
            self.handleError(record)


def configure(level: int | str = "INFO") -> None:
    """Readable single-line logs (``time level logger: message``) on stderr.

    pika reports every failed connection attempt at ERROR; the harness logs what matters about
    reconnects itself, so pika is held at CRITICAL.
    """
    handler = _StderrHandler()
    formatter = logging.Formatter(
        "%(asctime)s.%(msecs)03dZ %(levelname)-7s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    # fedora-messaging logs each invalid message with its whole body; the harness reports the
    # same event once, with the reason and the ids.
    logging.getLogger("fedora_messaging").setLevel(logging.CRITICAL)
