"""What a Prometheus scrape of the ledger costs on a ledger a fleet fills in months: against
one full pass over the same table, in the same process.

The ledger is filled through ``Ledger.record`` (the service's own write path) with 300 releases
of one image, each taken by 300 hosts: about 91,000 events. Then, in alternation:

* baseline: ``SELECT COUNT(*), MAX(at), SUM(LENGTH(body)) FROM events``, one pass over every row;
* imgline: a whole scrape of the ledger's collector (counts by topic and stream, each host's
  latest report, each stream's latest release, unfinished builds), rendered as Prometheus text.

Printed: the fill rate (events per second), median seconds of each, and the ratio.
Target: a scrape costs at most 3 such passes (ratio <= 3.0), so it grows with the table no
faster than reading it does.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from imgline.core.ledger.events import of_payload
from imgline.core.ledger.store import Ledger
from imgline.ledger.metrics import LedgerCollector

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "core" / "tests"))
from ledgerstory import built, published, requested, upgraded, verdict  # noqa: E402

TARGET_RATIO = 3.0


def fill(ledger: Ledger, releases: int, hosts: int) -> int:
    n = 0
    previous: str | None = None
    for v in range(1, releases + 1):
        r = requested(t=v * 1000)
        b = built(r, str(v), v * 1000 + 10)
        for event in (r, b, verdict(b, v * 1000 + 20), published(b, v * 1000 + 30)):
            ledger.record(of_payload(f"m{n}", event))
            n += 1
        for h in range(hosts):
            ledger.record(of_payload(f"m{n}", upgraded(f"host-{h}", b, previous, v * 1000 + 40)))
            n += 1
        previous = str(v)
    return n


def timed(fn: object) -> float:
    started = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", type=int, default=300)
    parser.add_argument("--hosts", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imgline-bench-ledger-") as tmp:
        path = Path(tmp) / "ledger.sqlite3"
        ledger = Ledger(path)
        started = time.perf_counter()
        events = fill(ledger, args.releases, args.hosts)
        took = time.perf_counter() - started
        print(f"filled {events} events in {took:.1f}s ({events / took:.0f} events/s)")
        registry = CollectorRegistry()
        registry.register(LedgerCollector(ledger, 7 * 86400.0))
        plain = sqlite3.connect(path)

        def baseline() -> None:
            plain.execute("SELECT COUNT(*), MAX(at), SUM(LENGTH(body)) FROM events").fetchall()

        def scrape() -> None:
            generate_latest(registry)

        baseline()
        scrape()  # warm both
        base, ours = [], []
        for _ in range(args.rounds):
            base.append(timed(baseline))
            ours.append(timed(scrape))
        b, o = statistics.median(base), statistics.median(ours)
        ratio = o / b
        print(f"baseline (one pass) median {b:.3f}s; scrape median {o:.3f}s; ratio {ratio:.2f}")
        print(f"target: ratio <= {TARGET_RATIO}: {'met' if ratio <= TARGET_RATIO else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
