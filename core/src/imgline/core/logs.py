"""Logging is configured here and nowhere else: one line per event, UTC timestamps."""

from __future__ import annotations

import logging
import sys
import time


def configure(level: int | str = "INFO", stream: object = None) -> None:
    """Readable single-line logs (``time level logger: message``) on stderr.

    pika reports every failed connection attempt at ERROR; the harness logs what matters about
    reconnects itself, so pika is held at CRITICAL.
    """
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
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
