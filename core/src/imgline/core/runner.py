"""The one way imgline runs external tools: logged, checked, and failing with a useful message.

Every command line and all its output go to a log (the per-build log beside the artefact), and a
non-zero exit raises ``CommandError`` naming the command, its exit status and the last lines of
its output, because "mksquashfs failed" alone helps nobody.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from imgline.core.errors import PermanentError

log = logging.getLogger(__name__)

TAIL_LINES = 25


class CommandError(PermanentError):
    """An external command failed or is missing; the message has its output tail: read it, fix
    the input or install the tool, and retry. Permanent: run again on the same input, the
    command fails again (callers that know better catch it and say so)."""

    def __init__(self, message: str, returncode: int | None = None, tail: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.tail = tail


def require(tool: str, hint: str) -> str:
    """Path of ``tool`` on PATH, or a ``CommandError`` saying how to get it."""
    found = shutil.which(tool)
    if found is None:
        raise CommandError(f"{tool} is not installed: {hint}")
    return found


def run(
    cmd: Sequence[str | Path],
    log_file: IO[str] | None = None,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    input_text: str | None = None,
) -> str:
    """Run ``cmd``, stream its merged output to ``log_file``, return it; raise on failure."""
    argv = [str(c) for c in cmd]
    line = shlex.join(argv)
    if log_file is not None:
        log_file.write(f"$ {line}\n")
        log_file.flush()
    log.debug("running %s", line)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    chunks: list[str] = []
    started = time.monotonic()
    try:
        proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
            argv,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
    except FileNotFoundError as exc:
        raise CommandError(f"{argv[0]} is not installed (needed for: {line})") from exc
    if input_text is not None and proc.stdin is not None:
        proc.stdin.write(input_text)
        proc.stdin.close()
    deadline = None if timeout is None else started + timeout
    with proc:  # closes the pipes however we leave
        if proc.stdout is None:
            raise CommandError(f"no output pipe for {line}")
        for out_line in proc.stdout:
            chunks.append(out_line)
            tail.append(out_line.rstrip("\n"))
            if log_file is not None:
                log_file.write(out_line)
            if deadline is not None and time.monotonic() > deadline:
                proc.kill()
                break
        try:
            remaining = None if deadline is None else max(1.0, deadline - time.monotonic())
            code = proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    elapsed = time.monotonic() - started
    if log_file is not None:
        log_file.write(f"# exit {code} after {elapsed:.1f}s\n")
        log_file.flush()
    if deadline is not None and time.monotonic() > deadline and code != 0:
        raise CommandError(
            f"{argv[0]} timed out after {timeout:.0f}s: {line}", code, "\n".join(tail)
        )
    if code != 0:
        last = "\n".join(tail)
        raise CommandError(
            f"{argv[0]} exited with status {code}: {line}\n--- last output:\n{last}", code, last
        )
    return "".join(chunks)
