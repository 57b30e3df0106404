"""A consumer process for the broker tests: handles build.requested, records what it did.

Environment: URL, SETTINGS (JSON for BusSettings), OUT (a file it appends to), SLOW (seconds
to work on each message). Lines written: ``started <request_id> <attempt-ish>``, ``done <id>``.
"""

from __future__ import annotations

import json
import os
import time

from imgline.core import logs
from imgline.core.bus import Consumer
from imgline.core.config import BusSettings
from imgline.schemas.messages import BuildRequestedV1


def record(line: str) -> None:
    with open(os.environ["OUT"], "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def main() -> None:
    logs.configure("INFO")
    settings = BusSettings(**json.loads(os.environ["SETTINGS"]))
    slow = float(os.environ.get("SLOW", "0"))

    def handle(msg: BuildRequestedV1) -> None:
        rid = msg.payload.request_id
        record(f"started {rid} {os.getpid()}")
        time.sleep(slow)
        record(f"done {rid} {os.getpid()}")

    consumer = Consumer(settings, os.environ["URL"])
    consumer.on(BuildRequestedV1, handle)
    consumer.install_signal_handlers()
    consumer.run()


if __name__ == "__main__":
    main()
