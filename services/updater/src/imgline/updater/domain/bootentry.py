"""Boot entries and boot counters as text: what the boot loader reads, and nothing it runs.

Two loaders, one idea. A new layer boots on trial a fixed number of times; if the OS does not
mark it good (the health check) before the count runs out, the boot loader itself goes back to
the previous layer. systemd-boot counts in the entry's file name (``<id>+3.conf``, the Boot
Loader Specification's boot counting); GRUB counts in its environment block (``grubenv``),
spelled out without arithmetic because Debian's GRUB 2.06 has no ``increment`` module.

Everything here is pure text in and out, so the exact bytes a boot loader sees are unit-tested.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from imgline.updater.errors import UpdaterError

MAX_TRIES = 9  # settings.HostConfig.boot_tries allows 1..9
GRUBENV_SIZE = 1024
GRUBENV_HEADER = b"# GRUB Environment Block\n"
_INT_MAX = 2**31 - 1  # systemd-boot ignores larger counters

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]*$")
# What systemd-boot would take for a boot counter at the end of a name (before ".conf").
_TRAILING_COUNTER = re.compile(r"\+[0-9]+(-[0-9]+)?$")
_COUNTER = re.compile(r"([0-9]+)(?:-([0-9]+))?\.conf")
_GRUB_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KEY_SEP = re.compile(r"[ \t]+")


@dataclass(frozen=True)
class Entry:
    """One layer's boot entry: BLS type #1 fields, its id being the file name without counter."""

    id: str
    title: str
    version: str
    linux: str
    initrd: str
    options: str


def _check_id(eid: str) -> str:
    if not _ID.match(eid):
        raise UpdaterError(
            f"boot entry id {eid!r} may only hold letters, digits and '._+~-': image names and "
            "versions must stay within those characters",
            step="boot_entry",
        )
    if _TRAILING_COUNTER.search(eid):
        raise UpdaterError(
            f"boot entry id {eid!r} ends in '+<number>', which systemd-boot would read as a boot "
            "counter; pin a version that does not end in '+<digits>'",
            step="boot_entry",
        )
    return eid


def entry_id(name: str, version: str) -> str:
    """``imgline-<name>-<version>``: stable per release, so every tool finds the same entry."""
    return _check_id(f"imgline-{name}-{version}")


# --- BLS type #1 --------------------------------------------------------------------------------

_BLS_KEYS = ("title", "version", "linux", "initrd", "options")


def render_bls(entry: Entry) -> str:
    """The entry file's text (Boot Loader Specification type #1)."""
    _check_id(entry.id)
    lines = []
    for key in _BLS_KEYS:
        value = getattr(entry, key)
        if "\n" in value or "\r" in value or not value.strip():
            raise UpdaterError(
                f"boot entry {entry.id}: {key} {value!r} is empty or spans lines; "
                "a BLS entry holds one line per key",
                step="boot_entry",
            )
        lines.append(f"{key} {value}\n")
    return "".join(lines)


def parse_bls(text: str, id: str) -> Entry:
    """Read an entry file as systemd-boot does: ``key value`` lines, ``#`` comments, repeated
    ``options`` joined with a space, unknown keys ignored."""
    found: dict[str, str] = {}
    initrds = 0
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, *rest = _KEY_SEP.split(line, maxsplit=1)
        value = rest[0].strip() if rest else ""
        if key == "options" and "options" in found:
            found["options"] = f"{found['options']} {value}"
        elif key in _BLS_KEYS:
            initrds += key == "initrd"
            found[key] = value
    missing = [k for k in _BLS_KEYS if k not in found]
    if missing:
        raise UpdaterError(
            f"boot entry {id} lacks {', '.join(missing)}; rerun the apply of that layer to "
            "rewrite it, or remove the entry file",
            step="boot_entry",
        )
    if initrds > 1:
        raise UpdaterError(
            f"boot entry {id} has {initrds} initrd lines, imgline writes one; it was edited by "
            "hand: restore a single initrd line or rerun the apply of that layer",
            step="boot_entry",
        )
    return Entry(id=id, **found)


# --- systemd-boot -------------------------------------------------------------------------------


def plain_name(id: str) -> str:
    """The entry file without a counter: a blessed entry, or one not on trial."""
    return f"{_check_id(id)}.conf"


def counted_name(id: str, left: int, done: int = 0) -> str:
    """``<id>+<left>.conf`` or ``<id>+<left>-<done>.conf``: systemd-boot renames it on every
    boot of the entry and gives up on it (sorts it last) once ``left`` reaches 0."""
    if not 0 <= left <= _INT_MAX or not 0 <= done <= _INT_MAX:
        raise UpdaterError(
            f"boot counter {left}-{done} for {id} is out of range: both must be 0..{_INT_MAX}",
            step="boot_entry",
        )
    counter = f"+{left}" if done == 0 else f"+{left}-{done}"
    return f"{_check_id(id)}{counter}.conf"


def parse_name(filename: str) -> tuple[str, int | None, int | None]:
    """(id, tries left, tries done) from an entry file name, exactly as systemd-boot reads it:
    the counter follows the last '+', is digits with an optional '-digits' (done then 0), and
    must run up to a literal ``.conf``; anything else means the entry is not counted."""
    if not filename.lower().endswith(".conf"):
        raise UpdaterError(
            f"{filename} is not a boot entry file (systemd-boot reads only *.conf); "
            "move it out of loader/entries",
            step="boot_entry",
        )
    plus = filename.rfind("+")
    if plus >= 0:
        m = _COUNTER.fullmatch(filename, plus + 1)
        if m:
            left, done = int(m.group(1)), int(m.group(2) or 0)
            if left <= _INT_MAX and done <= _INT_MAX:
                return filename[:plus], left, done
    return filename[: -len(".conf")], None, None


def render_loader_conf(default_pattern: str, timeout: int = 0) -> str:
    """``loader/loader.conf``: which entry boots (a glob over entry ids) and the menu timeout."""
    if not default_pattern or any(c.isspace() for c in default_pattern):
        raise UpdaterError(
            f"default entry pattern {default_pattern!r} must be one word, e.g. 'imgline-node-*'",
            step="boot_entry",
        )
    if timeout < 0:
        raise UpdaterError(f"menu timeout {timeout} must be 0 or more seconds", step="boot_entry")
    return f"default {default_pattern}\ntimeout {timeout}\n"


# --- GRUB environment block ---------------------------------------------------------------------


def _grubenv_error(why: str) -> UpdaterError:
    return UpdaterError(
        f"grubenv {why}; recreate it with `grub-editenv <file> create` and rerun the command",
        step="boot_entry",
    )


def parse_grubenv(data: bytes) -> dict[str, str]:
    """The variables of a GRUB environment block (backslash escapes undone, as GRUB does)."""
    if not data.startswith(GRUBENV_HEADER):
        raise _grubenv_error("does not start with '# GRUB Environment Block'")
    values: dict[str, str] = {}
    pos, end = len(GRUBENV_HEADER), len(data)
    while pos < end:
        if data[pos : pos + 1] == b"#":
            nl = data.find(b"\n", pos)
            pos = end if nl < 0 else nl + 1
            continue
        eq = data.find(b"=", pos)
        nl = data.find(b"\n", pos)
        if eq < 0 or (0 <= nl < eq):
            raise _grubenv_error(f"has a line without '=' at byte {pos}")
        key = data[pos:eq]
        value = bytearray()
        pos = eq + 1
        while pos < end and data[pos : pos + 1] != b"\n":
            if data[pos : pos + 1] == b"\\" and pos + 1 < end:
                pos += 1
            value += data[pos : pos + 1]
            pos += 1
        pos += 1
        try:
            values[key.decode()] = value.decode()
        except UnicodeDecodeError as exc:
            raise _grubenv_error(f"holds bytes that are not UTF-8 ({exc})") from exc
    return values


def render_grubenv(values: dict[str, str]) -> bytes:
    """A 1024-byte GRUB environment block; GRUB's ``save_env`` rewrites it in place, so the size
    must stay exactly what grub-editenv makes."""
    body = bytearray(GRUBENV_HEADER)
    for key, value in values.items():
        if not _GRUB_VAR.match(key):
            raise UpdaterError(
                f"grubenv key {key!r} is not a GRUB variable name (letters, digits, '_')",
                step="boot_entry",
            )
        if "\n" in value or "\r" in value:
            raise UpdaterError(
                f"grubenv value of {key} spans lines: {value!r}; use one line",
                step="boot_entry",
            )
        escaped = value.replace("\\", "\\\\")  # as grub-editenv writes it
        body += f"{key}={escaped}\n".encode()
    if len(body) > GRUBENV_SIZE:
        raise UpdaterError(
            f"grubenv would need {len(body)} bytes, the block holds {GRUBENV_SIZE}; remove "
            f"unneeded variables with `grub-editenv <file> unset <name>` ({', '.join(values)})",
            step="boot_entry",
        )
    return bytes(body) + b"#" * (GRUBENV_SIZE - len(body))


# --- grub.cfg -----------------------------------------------------------------------------------


def _quote(value: str, what: str) -> str:
    if "'" in value or "\n" in value or "\r" in value:
        raise UpdaterError(
            f"{what} {value!r} holds a single quote or a line break, which grub.cfg cannot "
            "quote safely; remove it",
            step="boot_entry",
        )
    return f"'{value}'"


def _kernel_args(entry: Entry) -> str:
    """Each option as its own quoted word: GRUB joins words with spaces, but would wrap one
    holding spaces in double quotes and (before 2.12) escape quotes and backslashes."""
    words = entry.options.split()
    for word in words:
        if any(c in word for c in "'\"\\"):
            raise UpdaterError(
                f"kernel option {word!r} of {entry.id} holds a quote or a backslash, which GRUB "
                "would pass on altered; write the option without them",
                step="boot_entry",
            )
    return " ".join(f"'{w}'" for w in words)


COUNTER_MARK = "# imgline boot counter"


def grub_cfg_counter_block(tries: int) -> str:
    """The countdown, shared by our grub.cfg and the grub.d snippet for grub-mkconfig hosts.

    ``boot_counter`` set means a layer is on trial: each boot takes one step down, and at 0 (or
    at a value this block does not know, so a trial can never run uncounted) GRUB boots
    ``imgline_fallback`` and leaves ``imgline_fell_back=1`` for the OS to report the rollback.
    The OS ends the trial by unsetting ``boot_counter`` once the health check passes.
    """
    if not 1 <= tries <= MAX_TRIES:
        raise UpdaterError(f"boot tries must be 1..{MAX_TRIES}, not {tries}", step="boot_entry")
    lines = [
        COUNTER_MARK + ": a layer on trial gets a fixed number of boots, then GRUB",
        "# boots the previous one. GRUB 2.06 has no arithmetic: each step is spelled out.",
        "load_env",
        'if [ -n "${imgline_default}" ]; then',
        '  set default="${imgline_default}"',
        "fi",
        'if [ -n "${imgline_fallback}" ]; then',
        '  set fallback="${imgline_fallback}"',
        "fi",
    ]
    for left in range(tries, 0, -1):
        keyword = "if" if left == tries else "elif"
        lines += [
            f'{keyword} [ "${{boot_counter}}" = "{left}" ]; then',
            f"  set boot_counter={left - 1}",
            "  save_env boot_counter",
        ]
    lines += [
        'elif [ -n "${boot_counter}" ]; then',
        '  set default="${imgline_fallback}"',
        "  set imgline_fell_back=1",
        "  save_env imgline_fell_back",
        "fi",
    ]
    return "\n".join(lines) + "\n"


def render_grub_cfg(entries: Sequence[Entry], tries: int, boot_prefix: str = "") -> str:
    """A complete grub.cfg: serial and console, the countdown, one menu entry per layer.

    ``boot_prefix`` is where the kernel paths live as GRUB sees the disk (``/boot`` when /boot
    is not a file system of its own); the entries' paths are relative to /boot.
    """
    seen: set[str] = set()
    parts = [
        "# Written by imgline-updater whenever the boot entries change: edits here are lost.\n",
        "set timeout=1\n",
        "serial --unit=0 --speed=115200\n",
        "terminal_input serial console\n",
        "terminal_output serial console\n",
        "\n",
        grub_cfg_counter_block(tries),
    ]
    for entry in entries:
        if entry.id in seen:
            raise UpdaterError(f"boot entry {entry.id} is listed twice", step="boot_entry")
        seen.add(_check_id(entry.id))
        parts += [
            "\n",
            f"menuentry {_quote(entry.title, 'title')} --id {_quote(entry.id, 'id')} {{\n",
            f"  linux {_quote(boot_prefix + entry.linux, 'kernel path')} {_kernel_args(entry)}\n",
            f"  initrd {_quote(boot_prefix + entry.initrd, 'initrd path')}\n",
            "}\n",
        ]
    return "".join(parts)


GRUB_D_SNIPPET: str = (
    "#!/bin/sh\n"
    "# /etc/grub.d/08_imgline_boot_counter, installed by imgline-updater: the boot counter for\n"
    "# hosts whose grub.cfg is made by grub-mkconfig. Do not edit; the updater rewrites it.\n"
    "set -e\n"
    "cat <<'EOF'\n" + grub_cfg_counter_block(MAX_TRIES) + "EOF\n"
)
