"""Kickstart text → ``BuildPlan``: the builder's front end.

pykickstart does the parsing, so a kickstart means here what it means to anaconda for the chosen
syntax version. Around it this module adds what a build service needs and pykickstart does not
give:

* ``%include`` / ``%ksappend`` are expanded here, against the checked-out repository only.
  pykickstart would resolve them against the process's working directory (and fetch URLs), which
  is wrong for a threaded service and unsafe for untrusted kickstarts. Expanding them ourselves
  also keeps a line map, so every error and warning names the file and line the author wrote.
* Errors become ``KickstartError`` with the line and pykickstart's message without its preamble.
* Warnings (deprecated commands and options, commands an image build ignores) are collected into
  ``plan.warnings`` for the build log instead of leaking through the ``warnings`` module.
* A few commands that newer syntax versions *removed* but that never mattered for an image
  (``auth``, ``install``, …) are skipped with a warning, so one kickstart serves several versions.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shlex
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

# pykickstart ships no type hints (mypy flags the package once, on its first import): these
# names are Any, and the code below converts every value it reads from them.
from pykickstart import constants as ks_constants  # type: ignore[import-untyped]
from pykickstart import errors as ks_errors
from pykickstart import version as ks_version
from pykickstart.base import DeprecatedCommand, RemovedCommand  # type: ignore[import-untyped]
from pykickstart.parser import KickstartParser  # type: ignore[import-untyped]

from imgline.builder.domain.plan import (
    BuildPlan,
    Group,
    Repo,
    RootFs,
    RootPassword,
    Script,
    SshKey,
    User,
)
from imgline.builder.errors import KickstartError

__all__ = ["ParsedKickstart", "parse_kickstart"]

log = logging.getLogger(__name__)

#: Commands that later syntax versions removed (pykickstart then raises "X has been removed.")
#: and that have no meaning for an image build. They are skipped with a warning instead. Not in
#: the list on purpose: ``module`` and ``btrfs``, which would change what the image contains.
REMOVED_BUT_HARMLESS = frozenset(
    {
        "auth",
        "authconfig",
        "autostep",
        "device",
        "deviceprobe",
        "dmraid",
        "install",
        "interactive",
        "key",
        "langsupport",
        "method",
        "monitor",
        "mouse",
        "multipath",
        "nvdimm",
        "upgrade",
        "vnc",
    }
)

#: Commands whose data reaches the plan; any other command is reported as ignored.
_MAPPED_COMMANDS = frozenset(
    {
        "bootloader",
        "group",
        "keyboard",
        "lang",
        "network",
        "part",
        "partition",
        "repo",
        "rootpw",
        "selinux",
        "services",
        "sshkey",
        "timezone",
        "url",
        "user",
    }
)

#: Section headers pykickstart's parser registers (``KickstartParser.setupSections``).
_SECTIONS = frozenset(
    {
        "%addon",
        "%anaconda",
        "%certificate",
        "%onerror",
        "%packages",
        "%post",
        "%pre",
        "%pre-install",
        "%traceback",
    }
)

_INCLUDE_DIRECTIVES = ("%include", "%ksappend")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_PREAMBLE = re.compile(
    r"^\s*(The following problem occurred on line \d+ of the kickstart file:|"
    r"There was a problem reading from line \d+ of the kickstart file)\s*"
)
_ON_LINE = re.compile(r"\s+(?:on|at) line (\d+)")

# pykickstart keeps state in class attributes (``Script._ver``, ``Packages._ver``) and reports
# through the process-wide ``warnings`` module; parses must not interleave.
_PYKICKSTART_LOCK = threading.Lock()


@dataclass(frozen=True)
class ParsedKickstart:
    """A validated kickstart: the plan to build, and what identifies the input."""

    plan: BuildPlan
    warnings: tuple[str, ...]  # the same as plan.warnings, for the build log
    sha256: str  # of the main kickstart text as given (``image.built`` carries it)
    flat_text: str = ""  # with every %include expanded: what the plan was validated from


@dataclass(frozen=True)
class _Origin:
    """Where one line of the expanded kickstart came from."""

    path: str
    line: int


@dataclass(frozen=True)
class _Expanded:
    """The kickstart with every include inlined; ``origins[i]`` is the source of line ``i + 1``."""

    main: str
    lines: tuple[str, ...]
    origins: tuple[_Origin, ...]

    def origin(self, flat_line: int | None) -> _Origin | None:
        if flat_line is None or not 1 <= flat_line <= len(self.origins):
            return None
        return self.origins[flat_line - 1]

    def where(self, flat_line: int | None) -> str:
        origin = self.origin(flat_line)
        return f"{origin.path}:{origin.line}" if origin else ""

    def error(self, message: str, flat_line: int | None) -> KickstartError:
        origin = self.origin(flat_line)
        if origin is None:
            return KickstartError(message, path=self.main)
        return KickstartError(message, line=origin.line, path=origin.path)

    def text(self) -> str:
        return "".join(f"{line}\n" for line in self.lines)


def parse_kickstart(
    text: str,
    *,
    path: str = "kickstart.ks",
    include_root: Path | None = None,
    syntax: str = "RHEL9",
    variables: Mapping[str, str] | None = None,
) -> ParsedKickstart:
    """Parse ``text`` as kickstart ``syntax`` (``RHEL9``, ``F39``, ``DEVEL``, …) into a plan.
    ``variables`` fills ``$releasever`` and ``$basearch`` in repository URLs.

    ``path`` names the kickstart in messages (its path inside the repository). ``include_root``
    is the checked-out repository that ``%include`` and ``%ksappend`` may read from; ``None``
    means an inline kickstart, which may not include anything. Raises ``KickstartError`` naming
    the file and line for anything the author has to fix.
    """
    sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
    expanded = _expand(text, path, include_root)
    with _PYKICKSTART_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        handler = _make_handler(syntax)
        notes = _Notes(expanded)
        _run_parser(handler, expanded, notes, caught)
        notes.add_caught(caught, line=None)
    plan = _build_plan(handler, expanded, notes, variables or {})
    return ParsedKickstart(
        plan=plan, warnings=plan.warnings, sha256=sha256, flat_text=expanded.text()
    )


# --- includes -------------------------------------------------------------------------------


def _expand(text: str, path: str, include_root: Path | None) -> _Expanded:
    """Inline ``%include`` and ``%ksappend`` wherever they appear, as pykickstart would (its
    parser follows ``%include`` inside sections too), but reading only from ``include_root``."""
    root = include_root.resolve() if include_root is not None else None
    main = _main_file(root, path)
    lines: list[str] = []
    origins: list[_Origin] = []

    def walk(content: str, shown: str, here: Path | None, stack: tuple[Path, ...]) -> None:
        for number, line in enumerate(content.splitlines(), start=1):
            words = line.split()
            if not words or words[0] not in _INCLUDE_DIRECTIVES:
                lines.append(line)
                origins.append(_Origin(shown, number))
                continue
            where = _Origin(shown, number)
            target = _include_target(line, words[0], where, root, here)
            if target in stack:
                cycle = " → ".join(_display(root, p) for p in (*stack, target))
                raise KickstartError(f"{words[0]} cycle: {cycle}", line=number, path=shown)
            walk(_read(target, where), _display(root, target), target.parent, (*stack, target))

    here = main.parent if main is not None else root
    walk(text, path, here, (main,) if main is not None else ())
    return _Expanded(path, tuple(lines), tuple(origins))


def _main_file(root: Path | None, path: str) -> Path | None:
    """The main kickstart's place in the repository, for relative includes and cycle checks."""
    if root is None or PurePosixPath(path).is_absolute():
        return None
    candidate = (root / path).resolve()
    return candidate if candidate.is_relative_to(root) else None


def _include_target(
    line: str, directive: str, where: _Origin, root: Path | None, here: Path | None
) -> Path:
    """Resolve one include line. Like pykickstart, a relative name is tried against the root
    (pykickstart: the working directory) and then the including file's directory."""
    if root is None:
        raise KickstartError(
            f"inline kickstarts cannot {directive}: put the kickstart and the files it "
            "includes in a git repository",
            line=where.line,
            path=where.path,
        )
    try:
        args = shlex.split(line, comments=True)
    except ValueError as exc:
        raise KickstartError(f"{directive}: {exc}", line=where.line, path=where.path) from exc
    if len(args) != 2:
        raise KickstartError(
            f"{directive} takes exactly one file name, got {len(args) - 1}",
            line=where.line,
            path=where.path,
        )
    name = args[1]
    if "://" in name:
        raise KickstartError(
            f"{directive} {name}: only files in the repository can be included, not URLs",
            line=where.line,
            path=where.path,
        )
    bases = [root] if here is None or here == root else [root, here]
    candidates = [(base / name).resolve() for base in bases]
    inside = [c for c in candidates if c.is_relative_to(root)]
    if not inside:
        raise KickstartError(
            f"{directive} {name} points outside the repository", line=where.line, path=where.path
        )
    for candidate in inside:
        if candidate.is_file():
            return candidate
    looked = ", ".join(_display(root, c) for c in inside)
    raise KickstartError(
        f"{directive} {name}: no such file in the repository (looked for {looked})",
        line=where.line,
        path=where.path,
    )


def _read(target: Path, where: _Origin) -> str:
    try:
        return target.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KickstartError(
            f"cannot read included file {target.name}: {exc}", line=where.line, path=where.path
        ) from exc


def _display(root: Path | None, target: Path) -> str:
    if root is not None and target.is_relative_to(root):
        return target.relative_to(root).as_posix()
    return str(target)


# --- running pykickstart ----------------------------------------------------------------------


class _Notes:
    """Warnings for the build log, each prefixed with ``file:line`` where one is known, plus the
    commands pykickstart dispatched (name, expanded line) for the "ignored" report."""

    def __init__(self, expanded: _Expanded) -> None:
        self.expanded = expanded
        self._messages: list[tuple[float, str]] = []
        self.dispatched: list[tuple[str, int]] = []

    def add(self, message: str, flat_line: int | None) -> None:
        where = self.expanded.where(flat_line)
        order = float(flat_line) if where and flat_line is not None else float("inf")
        self._messages.append((order, f"{where}: {message}" if where else message))

    def messages(self) -> tuple[str, ...]:
        """In kickstart order (as expanded), so the build log reads top to bottom."""
        return tuple(message for _, message in sorted(self._messages, key=lambda m: m[0]))

    def add_caught(self, caught: list[warnings.WarningMessage], line: int | None) -> None:
        """Move recorded warnings into the notes; ``line`` is the command being parsed, if any.
        pykickstart puts "on line N" (an expanded line) into some messages: that is rewritten to
        the author's file and line."""
        for record in caught:
            message = str(record.message)
            if not issubclass(record.category, ks_errors.KickstartWarning):
                # Not about the kickstart (e.g. a library deprecation): for developers only.
                log.debug("warning while parsing a kickstart: %s: %s", record.category, message)
                continue
            flat_line = line
            found = _ON_LINE.search(message)
            if found is not None:
                flat_line = flat_line or int(found.group(1))
                message = _ON_LINE.sub("", message, count=1)
            self.add(_tidy(message), flat_line)
        caught.clear()


def _make_handler(syntax: str) -> Any:
    """A fresh pykickstart handler for ``syntax``; a name pykickstart does not know is the
    requester's mistake, so the error lists the names it does know."""
    try:
        return ks_version.makeVersion(ks_version.stringToVersion(syntax))
    except ks_errors.KickstartVersionError as exc:
        known = _summarise_versions(str(name) for name in ks_version.versionMap)
        raise KickstartError(
            f"unknown kickstart syntax version {syntax!r}: use DEVEL or a release such as RHEL9 "
            f"or F39 (pykickstart knows {known})"
        ) from exc


def _run_parser(
    handler: Any, expanded: _Expanded, notes: _Notes, caught: list[warnings.WarningMessage]
) -> None:
    """Parse the expanded text. The handler's dispatcher is wrapped (on this instance only) to
    learn which line each command is on: pykickstart's own warnings rarely say, and removed but
    harmless commands must be skipped before pykickstart turns them into errors."""
    dispatch: Callable[[list[str], int], Any] = handler.dispatcher

    def dispatcher(args: list[str], lineno: int) -> Any:
        name = args[0]
        command = handler.commands.get(name)
        if name in REMOVED_BUT_HARMLESS and (
            command is None or isinstance(command, RemovedCommand)
        ):
            notes.add(
                f"{name} was removed from kickstart syntax {_version_name(handler)} and has no "
                "effect on an image; ignored",
                lineno,
            )
            return None
        notes.add_caught(caught, line=None)  # anything recorded before this command
        try:
            result = dispatch(args, lineno)
        finally:
            notes.add_caught(caught, line=lineno)
        if not isinstance(command, DeprecatedCommand):  # those warn by themselves
            notes.dispatched.append((name, lineno))
        return result

    handler.dispatcher = dispatcher
    parser = KickstartParser(handler, followIncludes=False)
    try:
        parser.readKickstartFromString(expanded.text())
    except ks_errors.KickstartError as exc:
        raise _parse_error(exc, expanded) from exc
    except ValueError as exc:  # shlex, before pykickstart sees the line: unbalanced quotes
        raise expanded.error(
            f"cannot split this line into words: {exc}", _unsplittable_line(expanded.lines)
        ) from exc


def _parse_error(exc: Any, expanded: _Expanded) -> KickstartError:
    """pykickstart's error with its preamble removed and its line mapped back to the source. A
    missing ``%end`` is reported at the header of the section that lacks it, not where
    pykickstart noticed (the end of the file or the next section)."""
    message = exc.message if isinstance(exc.message, str) and exc.message else str(exc)
    message = _tidy(message) or "cannot parse this line"
    flat_line = exc.lineno if isinstance(exc.lineno, int) else None
    if flat_line is not None and "%end" in message:
        flat_line = _open_section(expanded.lines, flat_line) or flat_line
    return expanded.error(message, flat_line)


def _tidy(message: str) -> str:
    message = _PREAMBLE.sub("", _ANSI.sub("", message))
    return " ".join(message.split())


def _open_section(lines: tuple[str, ...], flat_line: int) -> int | None:
    """The header of the section still open at ``flat_line``: the nearest earlier line that
    starts a section (a section line inside the body would have ended it already)."""
    if flat_line > len(lines):
        return None
    for index in range(flat_line - 2, -1, -1):
        words = lines[index].split()
        if words and words[0] in _SECTIONS:
            return index + 1
        if words and words[0] == "%end":
            return None
    return None


def _unsplittable_line(lines: tuple[str, ...]) -> int | None:
    """The first line pykickstart would shell-split and cannot: every command line, and inside a
    section only the lines that look like ``%end`` or a section header."""
    in_section = False
    for number, line in enumerate(lines, start=1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if in_section and words[0] not in _SECTIONS and words[0] != "%end":
            continue
        try:
            shlex.split(line, comments=not in_section)
        except ValueError:
            return number
        if words[0] in _SECTIONS:
            in_section = True
        elif words[0] == "%end":
            in_section = False
    return None


def _version_name(handler: Any) -> str:
    return str(ks_version.versionToString(handler.version))


def _summarise_versions(names: Iterable[str]) -> str:
    """``DEVEL, F7-F46, FC3-FC6, RHEL3-RHEL11``: every known name, in runs."""
    numbered: dict[str, list[int]] = {}
    plain: list[str] = []
    for name in names:
        found = re.fullmatch(r"([A-Z]+)(\d+)", name)
        if found is None:
            plain.append(name)
        else:
            numbered.setdefault(found.group(1), []).append(int(found.group(2)))
    parts = sorted(plain)
    for prefix in sorted(numbered):
        parts.extend(f"{prefix}{run}" for run in _runs(sorted(numbered[prefix]), prefix))
    return ", ".join(parts)


def _runs(numbers: list[int], prefix: str) -> Iterator[str]:
    start = previous = numbers[0]
    for number in [*numbers[1:], None]:
        if number is not None and number == previous + 1:
            previous = number
            continue
        yield str(start) if start == previous else f"{start}-{prefix}{previous}"
        if number is not None:
            start = previous = number


# --- handler → plan ---------------------------------------------------------------------------
# pykickstart is untyped: every value read from the handler goes through one of these helpers.


def _text(value: object) -> str | None:
    return str(value) if value not in (None, "") else None


def _texts(values: object) -> tuple[str, ...]:
    if not isinstance(values, list | tuple):
        return ()
    return tuple(str(v) for v in values if v not in (None, ""))


def _number(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _build_plan(
    handler: Any, expanded: _Expanded, notes: _Notes, variables: Mapping[str, str]
) -> BuildPlan:
    """Everything the backends use, from the parsed handler. What the plan has no place for is
    reported in ``warnings`` so the build log says why a setting had no effect."""
    for name, flat_line in notes.dispatched:
        if name not in _MAPPED_COMMANDS:
            notes.add(f"{name} is ignored: image builds do not use it", flat_line)
    packages = handler.packages
    fields: dict[str, Any] = {
        "packages": _texts(packages.packageList),
        "excluded_packages": _texts(packages.excludedList),
        "groups": tuple(str(group.name) for group in packages.groupList),
        "packages_where": expanded.where(_packages_header(expanded)),
        "exclude_docs": bool(packages.excludeDocs),
        "ignore_missing": packages.handleMissing == ks_constants.KS_MISSING_IGNORE,
        "nocore": bool(packages.nocore),
        "inst_langs": _langs(packages.instLangs),
        "exclude_weakdeps": bool(getattr(packages, "excludeWeakdeps", False)),
        "users": tuple(_user(data) for data in handler.user.userList),
        "user_groups": tuple(
            Group(name=str(g.name), gid=_number(g.gid)) for g in handler.group.groupList
        ),
        "ssh_keys": tuple(_sshkey(data, expanded) for data in handler.sshkey.sshUserList),
        "kernel_args": _kernel_args(handler.bootloader, expanded, notes),
        "services_enabled": _texts(handler.services.enabled),
        "services_disabled": _texts(handler.services.disabled),
        "selinux": _selinux(handler.selinux.selinux),
        "hostname": next(
            (str(net.hostname) for net in handler.network.network if net.hostname), None
        ),
        "rootfs": _rootfs(handler, expanded, notes),
        "mirror": _mirror(handler.url, variables, expanded),
        "repos": tuple(_repo(data, variables, expanded) for data in handler.repo.repoList),
        "pre": _scripts(handler.scripts, ks_constants.KS_SCRIPT_PRE, expanded),
        "post": _scripts(handler.scripts, ks_constants.KS_SCRIPT_POST, expanded),
    }
    _note_unused_packages_options(packages, expanded, notes)
    _note_unused_scripts(handler.scripts, notes)
    if lang := _text(handler.lang.lang):
        fields["lang"] = lang
    keyboard = handler.keyboard
    layouts = _texts(keyboard.x_layouts)
    if chosen := _text(keyboard.keyboard) or _text(keyboard.vc_keymap) or next(iter(layouts), ""):
        fields["keyboard"] = chosen
    if handler.timezone.seen:
        fields["timezone_utc"] = bool(handler.timezone.isUtc)
        if zone := _text(handler.timezone.timezone):
            fields["timezone"] = zone
    if handler.rootpw.seen:
        fields["root_password"] = RootPassword(
            locked=bool(handler.rootpw.lock),
            password=_text(handler.rootpw.password),
            crypted=bool(handler.rootpw.isCrypted),
        )
    return BuildPlan(**fields, warnings=notes.messages())


#: Kernel options the updater sets itself for each layer (docs/host.md): a kickstart's would
#: point the boot at the wrong root.
_OWN_KERNEL_ARGS = ("root", "rd.lvm.lv", "rootflags", "ro", "rw")
_KERNEL_ARG = re.compile(r"^[A-Za-z0-9_.,:=/+@%-]+$")


def _kernel_args(bootloader: Any, expanded: _Expanded, notes: _Notes) -> tuple[str, ...]:
    """``bootloader --append``: each option checked, since it ends up in every boot entry the
    updater writes for this image."""
    lineno = _number(bootloader.lineno)
    if lineno and any(not word.startswith("--append") for word in _words(expanded, lineno)[1:]):
        notes.add(
            "bootloader: only --append is used (the updater installs and configures the boot "
            "loader on each host)",
            lineno,
        )
    text = _text(bootloader.appendLine)
    if text is None:
        return ()
    args = tuple(text.split())
    for arg in args:
        if not _KERNEL_ARG.match(arg):
            raise expanded.error(
                f"bootloader --append: {arg!r} holds a character a boot entry cannot carry "
                "safely (quotes, backslashes, $, ;, control characters)",
                lineno,
            )
        if arg.split("=", 1)[0] in _OWN_KERNEL_ARGS:
            raise expanded.error(
                f"bootloader --append: {arg!r} is set by the updater for each layer; leave it out",
                lineno,
            )
    return args


def _words(expanded: _Expanded, lineno: int) -> list[str]:
    """The (expanded) line's words, as the shell-like kickstart syntax splits them."""
    try:
        return shlex.split(expanded.lines[lineno - 1], comments=True)
    except (ValueError, IndexError):
        return []


def _sshkey(data: Any, expanded: _Expanded) -> SshKey:
    lineno = _number(data.lineno)
    origin = expanded.origin(lineno)
    key = _text(data.key) or ""
    if not key or any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise expanded.error("sshkey needs a one-line public key", lineno)
    return SshKey(user=str(data.username), key=key, lineno=origin.line if origin else 1)


def _user(data: Any) -> User:
    return User(
        name=str(data.name),
        password=_text(data.password),
        crypted=bool(data.isCrypted),
        locked=bool(data.lock),
        groups=_texts(data.groups),
        uid=_number(data.uid),
        gid=_number(data.gid),
        homedir=_text(data.homedir),
        shell=_text(data.shell),
        gecos=_text(data.gecos),
    )


def _selinux(value: object) -> Literal["enforcing", "permissive", "disabled"] | None:
    if value == ks_constants.SELINUX_ENFORCING:
        return "enforcing"
    if value == ks_constants.SELINUX_PERMISSIVE:
        return "permissive"
    if value == ks_constants.SELINUX_DISABLED:
        return "disabled"
    return None


def _rootfs(handler: Any, expanded: _Expanded, notes: _Notes) -> RootFs:
    """``part /`` sizes the image's ext4 root; every other partition is the installer's business
    (an image has exactly one file system), so it is reported and ignored. A later ``part /``
    replaces an earlier one, as in pykickstart and anaconda: a variant ``%include``s its base
    and resizes it. Without ``part /`` (or its ``--size``), the image is as large as its
    content plus the builder's headroom."""
    roots: list[Any] = []
    for data in handler.partition.partitions:
        if data.mountpoint == "/":
            roots.append(data)
        else:
            notes.add(
                f"part {data.mountpoint} is ignored: the image has only a / file system",
                data.lineno,
            )
    if not roots:
        notes.add(
            "no part /: the image's root is ext4, sized to its content plus the builder's "
            "headroom (rootfs_headroom_mib)",
            None,
        )
        return RootFs()
    *earlier, root = roots
    for old in earlier:
        notes.add(
            f"part / is replaced by the later one at {expanded.where(root.lineno)}", old.lineno
        )
    fstype = _text(root.fstype)
    if fstype is None:
        notes.add("part / has no --fstype; the image's root is ext4", root.lineno)
    elif fstype != "ext4":
        raise expanded.error(
            f"part / --fstype={fstype}: images are built as ext4, use --fstype=ext4", root.lineno
        )
    size = _number(root.size)
    if size is not None and size <= 0:
        raise expanded.error(
            f"part / --size={size}: the size is a positive number of MiB", root.lineno
        )
    if size is None:
        notes.add(
            "part / has no --size: the image is sized to its content plus the builder's "
            "headroom (rootfs_headroom_mib)",
            root.lineno,
        )
    if root.grow or root.maxSizeMB:
        notes.add("part / --grow/--maxsize are ignored: the image is --size MiB", root.lineno)
    return RootFs(
        size_mib=size, fstype="ext4", fsoptions=_text(root.fsopts), label=_text(root.label)
    )


#: The dnf variables a repository URL may use, filled from the builder's config.
_VARIABLE = re.compile(r"\$(?:\{(releasever|basearch)\}|(releasever|basearch)\b)")


def _fill(url: str, variables: Mapping[str, str], expanded: _Expanded, lineno: int) -> str:
    """``url`` with ``$releasever`` and ``$basearch`` replaced; an error naming the line and
    the config key when the builder has no value for one."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if not variables.get(name):
            raise expanded.error(
                f"${name} is used but this builder has no value for it: set {name} in its config",
                lineno,
            )
        return variables[name]

    return _VARIABLE.sub(value, url)


def _source(
    name: str, data: Any, variables: Mapping[str, str], expanded: _Expanded, what: str
) -> Repo:
    """A ``Repo`` from a ``url`` or ``repo`` line: its base URL, mirror list or metalink."""
    lineno = _number(data.lineno) or 0
    urls = {
        key: _fill(text, variables, expanded, lineno)
        for key, attr in (("baseurl", what), ("mirrorlist", "mirrorlist"), ("metalink", "metalink"))
        if isinstance(text := getattr(data, attr, None), str) and text
    }
    if len(urls) != 1:
        raise expanded.error(
            f"{'url' if name == 'base' else f'repo --name={name}'} needs exactly one of "
            f"--{'url' if what == 'url' else 'baseurl'}, --mirrorlist and --metalink",
            lineno,
        )
    return Repo(name=name, where=expanded.where(lineno), **urls)


def _mirror(url: Any, variables: Mapping[str, str], expanded: _Expanded) -> Repo | None:
    if not url.seen:
        return None
    return _source("base", url, variables, expanded, "url")


def _repo(data: Any, variables: Mapping[str, str], expanded: _Expanded) -> Repo:
    return _source(str(data.name), data, variables, expanded, "baseurl")


def _scripts(scripts: Any, kind: int, expanded: _Expanded) -> tuple[Script, ...]:
    """``%pre``/``%post`` in order. ``lineno`` is the header's line in the file that holds it
    (for a section in an included file, that file's line)."""
    result = []
    for script in scripts:
        if script.type != kind:
            continue
        origin = expanded.origin(script.lineno)
        result.append(
            Script(
                body=str(script.script),
                interpreter=_text(script.interp) or "/bin/sh",
                chroot=bool(script.inChroot),
                error_on_fail=bool(script.errorOnFail),
                lineno=origin.line if origin else max(1, _number(script.lineno) or 1),
                logfile=_text(script.logfile),
                where=expanded.where(script.lineno),
            )
        )
    return tuple(result)


def _note_unused_scripts(scripts: Any, notes: _Notes) -> None:
    names = {
        ks_constants.KS_SCRIPT_PREINSTALL: "%pre-install",
        ks_constants.KS_SCRIPT_TRACEBACK: "%traceback",
        ks_constants.KS_SCRIPT_ONERROR: "%onerror",
    }
    for script in scripts:
        if script.type in names:
            notes.add(
                f"{names[script.type]} is ignored: image builds run only %pre and %post",
                script.lineno,
            )


def _packages_header(expanded: _Expanded) -> int | None:
    """The (expanded) line of the ``%packages`` header: pykickstart keeps no lines for what the
    section holds, so messages about it point there."""
    return next(
        (n for n, line in enumerate(expanded.lines, 1) if line.split()[:1] == ["%packages"]), None
    )


def _langs(value: object) -> tuple[str, ...] | None:
    """``--inst-langs=en:de_DE`` as ("en", "de_DE"); None when not given (keep every one)."""
    if not isinstance(value, str):
        return None
    return tuple(lang for lang in re.split(r"[:,]", value) if lang)


def _note_unused_packages_options(packages: Any, expanded: _Expanded, notes: _Notes) -> None:
    """The plan has no place for an environment or excluded groups; pykickstart does not keep
    their lines, so the notes point at the ``%packages`` header."""
    header = _packages_header(expanded)
    if packages.environment:
        notes.add(f"%packages environment @^{packages.environment} is ignored", header)
    for group in packages.excludedGroupList:
        notes.add(f"%packages -@{group.name} is ignored: excluding groups is not supported", header)
