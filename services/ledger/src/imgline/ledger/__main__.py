"""``imgline-ledger``: records every pipeline event in one SQLite file, for ``imgline status``
and the fleet's metrics. Reads the TOML config (``IMGLINE_CONFIG``) and runs until SIGTERM."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import Any

from imgline.core.bus import Consumer
from imgline.core.config import BusSettings
from imgline.core.errors import TransientError
from imgline.core.ledger.events import of_payload
from imgline.core.ledger.store import Ledger
from imgline.core.service import run_service, service_config
from imgline.ledger.metrics import LedgerCollector
from imgline.ledger.settings import LedgerConfig
from imgline.schemas.messages import ALL_MESSAGES, ImglineMessage

log = logging.getLogger("imgline.ledger")


def recorder(ledger: Ledger) -> Callable[[ImglineMessage[Any]], None]:
    """The handler of every topic: store the event once, whatever its content says."""

    def record(msg: ImglineMessage[Any]) -> None:
        event = of_payload(msg.id, msg.payload)
        try:
            new = ledger.record(event)
        except sqlite3.Error as exc:  # a full disk, a locked file: the message waits
            raise TransientError(f"cannot write the ledger {ledger.path}: {exc}") from exc
        if not new:
            log.info("%s %s already recorded", event.topic, event.id)

    return record


def build_consumer(settings: BusSettings) -> Consumer:
    """The ledger's consumer: every topic to one recorder, and its collector on the registry."""
    config, url = service_config(settings, LedgerConfig)
    ledger = Ledger(config.db_path)
    consumer = Consumer(settings, url)
    record = recorder(ledger)
    for cls in ALL_MESSAGES:
        consumer.on(cls, record, topic=cls.binding())
    consumer.metrics.registry.register(LedgerCollector(ledger, config.unfinished_window_seconds))
    log.info("recording events in %s", config.db_path)
    return consumer


def main(argv: list[str] | None = None) -> int:
    return run_service("ledger", __doc__, build_consumer, argv)


if __name__ == "__main__":
    raise SystemExit(main())
