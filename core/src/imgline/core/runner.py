"""The one way imgline runs external tools: logged, checked, and failing with a useful message.

Every command line and all its output go to a log (the per-build log beside the artefact), and a
non-zero exit raises ``CommandError`` naming the command, its exit status and the last lines of
its output, because "mksquashfs failed" alone helps nobody.

Every command runs in a session of its own and gets SIGKILL when the service dies, and a
timeout kills everything it started. What it started in turn (mmdebstrap's apt and dpkg) is
recorded (``track_children``) and killed at the next start (``reap_leftovers``), so a service
killed mid-build leaves nothing running.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from functools import cache
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


# --- children that die with the service ------------------------------------------------------

_tracked: Path | None = None


def track_children(directory: Path | None) -> None:
    """Record each running command's session under ``directory`` (None: stop recording), so
    that after a crash ``reap_leftovers`` finds what the killed service left running."""
    global _tracked  # noqa: PLW0603 - one setting per process, made at start
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    _tracked = directory


@cache
def _setpriv() -> str | None:
    return shutil.which("setpriv")


def die_with_service() -> list[str]:
    """A prefix that makes the command get SIGKILL when the service dies (util-linux's
    ``setpriv --pdeathsig``; ``preexec_fn`` is unsafe in a threaded service)."""
    return ["setpriv", "--pdeathsig", "KILL", "--"] if _setpriv() else []


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(session id, start time in clock ticks) of ``pid``, or None when it is gone (a zombie
    is gone: it only waits for its parent to read its status)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    try:
        return None if fields[0] == "Z" else (int(fields[3]), int(fields[19]))
    except (IndexError, ValueError):
        return None


def is_running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (a zombie has ended)."""
    return _proc_stat(pid) is not None


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def reap_leftovers(directory: Path) -> list[int]:
    """Kill the sessions of commands a killed service left running (a build's mmdebstrap, its
    apt and dpkg); return the pids killed. Each command ran as a session of its own, recorded
    with its start time: a process of that session that started no earlier is one of ours."""
    killed: list[int] = []
    if not directory.is_dir():
        return killed
    boot = _boot_id()
    for record in directory.iterdir():
        try:
            leader = int(record.name)
            said_boot, started = record.read_text().split()
            since = int(started)
        except (ValueError, OSError):
            record.unlink(missing_ok=True)
            continue
        if said_boot == boot:
            killed += _kill_session(leader, since)
        record.unlink(missing_ok=True)
    return killed


def _kill_session(leader: int, since: int) -> list[int]:
    alive = _proc_stat(leader)
    if alive is not None and alive[1] != since:
        return []  # the pid was reused by an unrelated process
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat is not None and stat[0] == leader and stat[1] >= since:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
            except ProcessLookupError:
                pass
    if killed:
        log.warning("killed %d process(es) a stopped service left running: %s", len(killed), killed)
    return killed


def _record(pid: int) -> Path | None:
    if _tracked is None:
        return None
    stat = _proc_stat(pid)
    if stat is None:
        return None
    record = _tracked / str(pid)
    try:
        record.write_text(f"{_boot_id()} {stat[1]}\n")
    except OSError:
        log.warning("cannot record child %d under %s", pid, _tracked, exc_info=True)
        return None
    return record


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Kill the command and everything it started (its own session and process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


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
    if shutil.which(argv[0], path=(env or os.environ).get("PATH")) is None:
        raise CommandError(f"{argv[0]} is not installed (needed for: {line})")
    try:
        proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
            [*die_with_service(), *argv],
            start_new_session=True,  # its own process group: a timeout kills all of it
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
    record = _record(proc.pid)
    try:
        code = _follow(
            proc,
            input_text,
            timeout=timeout,
            started=started,
            chunks=chunks,
            tail=tail,
            log_file=log_file,
        )
    finally:
        if record is not None:
            record.unlink(missing_ok=True)
    elapsed = time.monotonic() - started
    if log_file is not None:
        log_file.write(f"# exit {code} after {elapsed:.1f}s\n")
        log_file.flush()
    deadline = None if timeout is None else started + timeout
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


def _follow(
    proc: subprocess.Popen[str],
    input_text: str | None,
    *,
    timeout: float | None,
    started: float,
    chunks: list[str],
    tail: deque[str],
    log_file: IO[str] | None,
) -> int:
    """Feed ``proc`` its input and collect its output until it ends; its exit status."""
    if input_text is not None and proc.stdin is not None:
        proc.stdin.write(input_text)
        proc.stdin.close()
    deadline = None if timeout is None else started + timeout
    # a silent command (or one whose children hold the pipe open) must time out too
    watchdog = None
    if deadline is not None:
        watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _kill_group, [proc])
        watchdog.daemon = True
        watchdog.start()
    try:
        return _collect(proc, deadline, chunks, tail, log_file)
    finally:
        if watchdog is not None:
            watchdog.cancel()


def _collect(
    proc: subprocess.Popen[str],
    deadline: float | None,
    chunks: list[str],
    tail: deque[str],
    log_file: IO[str] | None,
) -> int:
    with proc:  # closes the pipes however we leave
        if proc.stdout is None:
            raise CommandError(f"no output pipe for {proc.args!r}")
        for out_line in proc.stdout:
            chunks.append(out_line)
            tail.append(out_line.rstrip("\n"))
            if log_file is not None:
                log_file.write(out_line)
            if deadline is not None and time.monotonic() > deadline:
                _kill_group(proc)
                break
        try:
            remaining = None if deadline is None else max(1.0, deadline - time.monotonic())
            return proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return proc.wait()
