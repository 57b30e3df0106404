"""Booting an image live in qemu: is it up, is it healthy, does its network work.

One guest, three verdicts, each its own result in the report:

- ``boot.live``: the plan's marker on the serial console in time;
- ``boot.<check>``: each of the shared host checks (domain/inject.py), among them the system
  state, every unit the plan lists as enabled, and no failed unit, with the journal lines of a
  unit that is not running;
- ``boot.network``: the payload's answer on its port, forwarded from the host's loopback, is
  the image.json of the image under test.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from imgline.core import hostcheck
from imgline.core.runner import CommandError, die_with_service, require
from imgline.schemas import payloads as p
from imgline.tester.adapters.image import BOOT_INITRD, BOOT_KERNEL
from imgline.tester.domain import boot, inject
from imgline.tester.domain.plan import BootPlan
from imgline.tester.domain.results import CheckResult, Status, skipped

NAME = "boot.live"
CHECKS = "boot.checks"
NETWORK = "boot.network"
#: After the console closes, how long qemu gets to exit on its own and report its status.
EXIT_GRACE = 10.0


class Guest:
    """A running qemu whose console is copied to a file by a thread of its own, so the guest
    never blocks on a full pipe while we wait for something else."""

    def __init__(self, argv: list[str], console: Path, marker: str) -> None:
        self.marker = marker
        self.tail: deque[str] = deque(maxlen=200)
        self.seen = threading.Event()
        self.ended = threading.Event()
        self._out = console.open("wb")
        self.proc = subprocess.Popen(  # noqa: S603 - argv list
            [*die_with_service(), *argv],  # a tester killed mid-boot leaves no qemu behind
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._pump = threading.Thread(target=self._copy, name="qemu-console", daemon=True)
        self._pump.start()

    def _copy(self) -> None:
        assert self.proc.stdout is not None  # noqa: S101 - PIPE was requested
        try:
            for raw in iter(self.proc.stdout.readline, b""):
                self._out.write(raw)
                self._out.flush()
                line = boot.clean(raw.decode("utf-8", "replace"))
                self.tail.append(line)
                if self.marker in line:
                    self.seen.set()
        finally:
            self.ended.set()

    def wait_marker(self, deadline: float) -> bool:
        while not self.seen.is_set():
            if self.ended.is_set() or time.monotonic() >= deadline:
                return self.seen.is_set()
            self.seen.wait(0.5)
        return True

    def alive(self) -> bool:
        return not self.ended.is_set()

    def stop(self, grace: float) -> int | None:
        """qemu's exit status if it ends within ``grace`` seconds, else None (we stop it)."""
        try:
            code: int | None = self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None
        self._pump.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._out.close()
        return code


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def boot_check(
    image: Path,
    meta: dict[str, Any],
    plan: BootPlan,
    workdir: Path,
    log: IO[str],
    *,
    expected: p.ImageRef,
    units: Sequence[str] = (),
    boot_dir: Path | None = None,
    accel: str = "tcg",
) -> list[CheckResult]:
    """Boot ``image`` live with the kernel and initramfs ``run_sanity`` left in ``boot_dir``."""
    started = time.monotonic()
    deadline = started + plan.timeout_seconds
    console, results_log = workdir / "console.log", workdir / "checks.log"
    boot_dir = boot_dir or workdir / "boot"
    kernel, initrd = boot_dir / BOOT_KERNEL, boot_dir / BOOT_INITRD

    def live(status: str, detail: str) -> CheckResult:
        return CheckResult(
            name=NAME,
            status=status,  # type: ignore[arg-type]
            duration_seconds=round(time.monotonic() - started, 3),
            detail=detail,
            attachments=tuple(f for f in (console, results_log) if f.exists()),
        )

    if not kernel.is_file() or not initrd.is_file():
        why = f"image.json names {meta.get('kernel')!r} and {meta.get('initrd')!r}"
        return [live("failed", f"cannot take the kernel and initramfs out of the image ({why})")]
    try:
        qemu = require("qemu-system-x86_64", "apt-get install qemu-system-x86")
    except CommandError as exc:
        return [live("error", str(exc))]
    args = hostcheck.arguments(
        units=units,
        mounts=["/"],
        wait_boot_seconds=plan.timeout_seconds,
        settle_seconds=plan.timeout_seconds,
        drop_in_dir=hostcheck.DROP_IN_DIR,
    )
    checked_initrd = workdir / "initrd-checked.img"
    checked_initrd.write_bytes(inject.with_overlay(initrd.read_bytes(), inject.check_overlay(args)))
    forward = (free_port(), plan.http_port) if plan.http_port else None
    argv = boot.qemu_command(
        kernel=kernel,
        initrd=checked_initrd,
        image=image,
        memory_mib=plan.memory_mib,
        results=results_log,
        forward=forward,
        boot_args=str(meta.get("boot_args") or boot.DEFAULT_BOOT_ARGS),
        extra_args=plan.extra_kernel_args,
        accel=accel,
    )
    argv[0] = qemu
    log.write(f"$ {' '.join(argv)}\n")
    log.flush()
    guest = Guest(argv, console, plan.marker)
    stopped = False
    try:
        up = guest.wait_marker(deadline)
        took = time.monotonic() - started
        if not up:
            code = guest.stop(EXIT_GRACE if guest.ended.is_set() else 0)
            stopped = True
            why = boot.explain(guest.tail)
            if code is None:
                detail = (
                    f"no '{plan.marker}' on the console within {plan.timeout_seconds}s; "
                    f"last lines: {why}"
                )
            else:
                detail = (
                    f"the guest stopped (qemu exit {code}) after {took:.0f}s without "
                    f"'{plan.marker}': {why}"
                )
            return [
                live("failed", detail),
                skipped(CHECKS, "the guest never came up"),
                *([skipped(NETWORK, "the guest never came up")] if forward else []),
            ]
        results = [live("passed", f"'{plan.marker}' on the console after {took:.0f}s")]
        results += _host_checks(guest, results_log, deadline)
        if forward is not None:
            results.append(_network(forward[0], plan, expected, deadline))
        return results
    finally:
        if not stopped:
            guest.stop(0)


def _host_checks(guest: Guest, results_log: Path, deadline: float) -> list[CheckResult]:
    """Wait for the in-guest checks to finish, then one result per check."""
    started = time.monotonic()
    report = hostcheck.parse("")
    while time.monotonic() < deadline and guest.alive():
        report = hostcheck.parse(results_log.read_text(errors="replace"))
        if report.complete:
            break
        time.sleep(1.0)
    else:
        report = hostcheck.parse(results_log.read_text(errors="replace"))
    took = round(time.monotonic() - started, 3)
    results = [
        CheckResult(
            name=f"boot.{c.name}",
            status="passed" if c.ok else "failed",
            duration_seconds=took if i == 0 else 0.0,
            detail=c.detail,
        )
        for i, c in enumerate(report.checks)
    ]
    if not report.complete:
        why = "the guest stopped" if not guest.alive() else "the time limit ran out"
        results.append(
            CheckResult(
                name=CHECKS,
                status="failed",
                duration_seconds=took,
                detail=(
                    f"the in-guest checks did not finish ({why}; {len(report.checks)} reported). "
                    "They start from a dracut pre-pivot hook: an initramfs not made by dracut "
                    f"never runs them. Last console lines: {boot.explain(guest.tail)}"
                ),
            )
        )
    return results


def _network(port: int, plan: BootPlan, expected: p.ImageRef, deadline: float) -> CheckResult:
    """GET the payload through the forwarded port until it answers or the time is up."""
    started = time.monotonic()
    url = f"http://127.0.0.1:{port}{plan.http_path}"
    want = {
        "build_id": expected.build_id,
        "name": expected.name,
        "version": expected.version,
        "stream": expected.stream,
    }
    last = "no answer"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                body = answer.read(1 << 20)
        except (urllib.error.URLError, OSError) as exc:
            last = f"no answer from guest port {plan.http_port}: {exc}"
        else:
            wrong = boot.compare_answer(body, want)
            status: Status = "failed" if wrong else "passed"
            detail = wrong or f"guest port {plan.http_port} answers with this image's image.json"
            return CheckResult(
                name=NETWORK,
                status=status,
                duration_seconds=round(time.monotonic() - started, 3),
                detail=detail,
            )
        if time.monotonic() >= deadline:
            return CheckResult(
                name=NETWORK,
                status="failed",
                duration_seconds=round(time.monotonic() - started, 3),
                detail=f"{last} (the guest's network never came up, or nothing listens there)",
            )
        time.sleep(2.0)
