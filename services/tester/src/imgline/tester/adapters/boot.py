"""Booting an image live in qemu and watching its serial console for the marker."""

from __future__ import annotations

import os
import selectors
import subprocess
import time
from collections import deque
from pathlib import Path
from typing import IO, Any

from imgline.core import liveimg
from imgline.core.runner import CommandError, require
from imgline.tester.adapters.image import open_image
from imgline.tester.domain import boot
from imgline.tester.domain.plan import BootPlan
from imgline.tester.domain.results import CheckResult

NAME = "boot.live"


def boot_check(
    image: Path,
    meta: dict[str, Any],
    plan: BootPlan,
    workdir: Path,
    log: IO[str],
    *,
    accel: str = "tcg",
) -> CheckResult:
    """Boot ``image`` live and pass when ``plan.marker`` shows on the console in time."""
    started = time.monotonic()
    console = workdir / "console.log"

    def result(status: str, detail: str) -> CheckResult:
        return CheckResult(
            name=NAME,
            status=status,  # type: ignore[arg-type]
            duration_seconds=round(time.monotonic() - started, 3),
            detail=detail,
            attachments=(console,) if console.exists() else (),
        )

    kernel_path, initrd_path = meta.get("kernel"), meta.get("initrd")
    if not isinstance(kernel_path, str) or not isinstance(initrd_path, str):
        return result("failed", "image.json names no kernel/initrd: the image cannot boot live")
    try:
        qemu = require("qemu-system-x86_64", "apt-get install qemu-system-x86")
        kernel, initrd = workdir / "vmlinuz", workdir / "initrd.img"
        with open_image(image, workdir / "boot-mnt", log) as opened:
            kernel.write_bytes(liveimg.read_file(opened.rootfs, kernel_path, log))
            initrd.write_bytes(liveimg.read_file(opened.rootfs, initrd_path, log))
    except (CommandError, liveimg.LiveImgError) as exc:
        return result("failed", f"cannot take the kernel and initramfs out of the image: {exc}")
    argv = boot.qemu_command(
        kernel=kernel,
        initrd=initrd,
        image=image,
        memory_mib=plan.memory_mib,
        boot_args=str(meta.get("boot_args") or boot.DEFAULT_BOOT_ARGS),
        extra_args=plan.extra_kernel_args,
        accel=accel,
    )
    argv[0] = qemu
    log.write(f"$ {' '.join(argv)}\n")
    log.flush()
    seen, tail, code = _watch(argv, console, plan.marker, plan.timeout_seconds)
    elapsed = time.monotonic() - started
    if seen:
        return result("passed", f"'{plan.marker}' on the console after {elapsed:.0f}s")
    why = boot.explain(tail)
    if code is None:
        return result(
            "failed",
            f"no '{plan.marker}' on the console within {plan.timeout_seconds}s; last lines: {why}",
        )
    return result(
        "failed",
        f"the guest stopped (qemu exit {code}) after {elapsed:.0f}s without '{plan.marker}': {why}",
    )


def _watch(
    argv: list[str], console: Path, marker: str, timeout: float
) -> tuple[bool, deque[str], int | None]:
    """Run qemu, copy its console to ``console``; stop at the marker, exit or time-out.
    Returns (marker seen, last lines, qemu's exit code or None when it was stopped by us)."""
    tail: deque[str] = deque(maxlen=200)
    deadline = time.monotonic() + timeout
    seen = False
    with (
        console.open("wb") as out,
        subprocess.Popen(  # noqa: S603 - argv list
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        ) as proc,
    ):
        assert proc.stdout is not None  # noqa: S101 - PIPE was requested
        fd = proc.stdout.fileno()
        os.set_blocking(fd, False)
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        pending = b""
        try:
            while not seen and time.monotonic() < deadline:
                if not sel.select(timeout=1.0):
                    if proc.poll() is not None:
                        break
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                out.write(chunk)
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = boot.clean(raw.decode("utf-8", "replace"))
                    tail.append(line)
                    if marker in line:
                        seen = True
            if pending:
                tail.append(boot.clean(pending.decode("utf-8", "replace")))
                seen = seen or marker in tail[-1]
        finally:
            sel.close()
            code = _reap(proc, 0 if seen or time.monotonic() >= deadline else EXIT_GRACE)
    return seen, tail, code


#: After the console closes, how long qemu gets to exit on its own and report its status.
EXIT_GRACE = 10.0


def _reap(proc: subprocess.Popen[bytes], grace: float) -> int | None:
    """qemu's exit status if it ends within ``grace`` seconds, else ``None`` (we stop it)."""
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None
