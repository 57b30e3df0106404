"""Pipeline time: one git push until the test host has upgraded, on the demo's whole system
(tests/stack.py: private broker, every service, the trigger, the post-receive hook, a test host
VM booted like a machine). Run as root (the builder's build user), after ``make demo`` or the
vm tier has warmed the caches (packages, package roots, the node image, the host's disk).

Printed:

* wall time per stage, from one event to the next: push → build.requested (hook and trigger),
  → image.built (build), → image.tested (tests and the live boot), → image.published (signing),
  → host.upgraded (the host hears of it, applies, reboots, passes its health check);
* the bus overhead between stages: from one stage's emit (its ``emitted_at``) until the next
  stage's handler starts, as each consumer's ``imgline_message_delay_seconds`` recorded it,
  against a baseline measured in the same process on the same broker: a bare pika publish to
  a consumer's queue and its delivery (the floor any stage hand-over has). Target: < 1 s;
* push to upgraded host. Target: < 240 s with warm caches on 2 cores without KVM.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path

import pika

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
import stack  # noqa: E402 - after the path is set

from imgline.core import logs  # noqa: E402
from imgline.core.broker import broker_access  # noqa: E402

BUS_TARGET = 1.0
PUSH_TO_HOST_TARGET = 240.0


def bus_floor(admin_url: str, rounds: int = 30) -> float:
    """Median seconds from a bare publish to its delivery to a consumer, on this broker."""
    with closing(pika.BlockingConnection(pika.URLParameters(admin_url))) as conn:
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.confirm_delivery()
        times: list[float] = []
        for _ in range(rounds):
            started = time.perf_counter()
            ch.basic_publish("", queue, b"{}")
            for method, _props, _body in ch.consume(queue, inactivity_timeout=5):
                if method is not None:
                    ch.basic_ack(method.delivery_tag)
                break
            times.append(time.perf_counter() - started)
        ch.cancel()
    return statistics.median(times)


def delays(system: stack.System) -> dict[tuple[str, str], float]:
    """Mean delay per (service, topic) that each running consumer recorded."""
    found: dict[tuple[str, str], list[float]] = {}
    for name, run in system.services.items():
        for metric in run.consumer.metrics.registry.collect():
            if metric.name != "imgline_message_delay_seconds":
                continue
            for sample in metric.samples:
                key = (name, sample.labels.get("topic", "?"))
                if sample.name.endswith("_sum"):
                    found.setdefault(key, [0.0, 0.0])[0] = sample.value
                elif sample.name.endswith("_count"):
                    found.setdefault(key, [0.0, 0.0])[1] = sample.value
    return {key: total / count for key, (total, count) in found.items() if count}


def stamp(body: dict[str, object]) -> float:
    return datetime.fromisoformat(str(body["emitted_at"]).replace("Z", "+00:00")).timestamp()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    logs.configure("WARNING")
    if os.geteuid() != 0:
        print("run as root: the builder switches to its build user", file=sys.stderr)
        return 2
    root = stack.CACHE / "bench-pipeline"
    with (
        broker_access(passwords={"updater": stack.updater_password()}) as broker,
        stack.running_system(broker, root) as system,
    ):
        host = stack.installed_host(system, stack.ADMIN_EDITS, progress=print)
        floor = bus_floor(broker.admin_url)
        base = host.release.version
        with host.boot() as vm:
            # a running host: up, its agent on the bus, before the push
            stack.expect(vm, f"IMGLINE-PAYLOAD-READY {base}", args.timeout, host.console)
            time.sleep(5)
            pushed_at = time.time()
            system.push(stack.first_push_files(), "the node image")
            upgraded = system.wait_event(("host.upgraded",), args.timeout)
            published = system.wait_event(("image.published",), 60)
            new = published.body["version"]
            stack.expect(vm, f"IMGLINE-HEALTH host.upgraded {new}", 60, host.console)

        def first(topic: str) -> stack.Event:
            return next(e for e in system.seen if e.topic.startswith(topic))

        stages = [
            ("push -> build.requested (hook, trigger)", first("build.requested")),
            ("-> image.built (build)", first("image.built")),
            ("-> image.tested (tests, live boot)", first("image.tested")),
            ("-> image.published (signing)", first("image.published")),
            ("-> host.upgraded (apply, reboot, health)", upgraded),
        ]
        print(f"\npush to upgraded host, node-{base} -> node-{new}:")
        last = pushed_at
        for label, event in stages:
            # the host's emitted_at is by its own (emulated) clock: use when it arrived here
            at = event.at if event.topic.startswith("host.") else stamp(event.body)
            print(f"  {label:44s} {at - last:7.1f} s")
            last = at
        total = upgraded.at - pushed_at
        verdict = "within" if total < PUSH_TO_HOST_TARGET else "OVER"
        print(f"  {'total':44s} {total:7.1f} s  ({verdict} the {PUSH_TO_HOST_TARGET:.0f} s target)")
        print(f"\nbus overhead, emit -> next stage's handler start (floor: bare publish to "
              f"delivery {floor * 1000:.1f} ms, same broker):")  # fmt: skip
        for (service, topic), delay in sorted(delays(system).items()):
            verdict = "ok" if delay < BUS_TARGET else "OVER"
            print(
                f"  {topic:32s} -> {service:9s} {delay * 1000:8.1f} ms  "
                f"{delay / floor:7.1f}x floor  ({verdict}: target < {BUS_TARGET:.0f} s)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
