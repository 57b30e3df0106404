"""Fetching the kickstart a request names: a shallow git checkout of one commit, or inline text.

The URL, ref and path come from whoever could publish ``build.requested``, so they are checked
before git sees them (docs/security.md, "Builds"): the URL's transport must be one the config
allows, nothing may start with ``-`` (git would read it as an option: a ref of
``--upload-pack=<command>`` runs that command), and ``--`` ends git's options before every
value from the request. git itself is told to refuse every other transport, too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from imgline.builder.errors import SourceError, SourceUnavailableError
from imgline.core.runner import CommandError, run
from imgline.schemas.payloads import GitSource, InlineSource

_SHA = re.compile(r"^[0-9a-f]{7,64}$")
_FULL_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
#: ``[user@]host:path``, git's scp-like form of ssh (no ``/`` before the colon).
_SCP = re.compile(r"^(?:[^@/:\s]+@)?[^@/:\s]+:")
#: ``<transport>::<address>``, git's form for remote helpers (``ext::sh -c ...``).
_HELPER = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)::")
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")
_PERMANENT = (
    "not found",
    "does not exist",
    "couldn't find remote ref",
    "not our ref",
    "not a git repository",
    "unadvertised object",
    "invalid refspec",
    "repository '",
    "does not appear to be a git repository",
    "not allowed",  # a transport git was told to refuse
)
GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",  # never wait for a password on a CI/builder host
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
}


@dataclass(frozen=True)
class KickstartSource:
    """A kickstart ready to parse: its text, where it lives and which commit it came from."""

    text: str
    path: str  # as shown to people: the path in the repository, or "inline.ks"
    file: Path  # on disk, for backends that read the file themselves
    include_root: Path | None  # %include resolves here (the checkout), None for inline
    commit: str | None


def transport(url: str) -> str:
    """The transport git would use for ``url``: its scheme, ``ssh`` for ``host:path``, the
    helper's name for ``helper::address``, ``file`` for a plain path."""
    for pattern in (_HELPER, _URL):
        match = pattern.match(url)
        if match:
            return match.group(1).lower()
    if _SCP.match(url):
        return "ssh"
    return "file"


def check_git_source(source: GitSource, schemes: Iterable[str]) -> None:
    """Refuse a source git could misread: a ``SourceError`` naming the value and the rule."""
    allowed = sorted(set(schemes))
    for what, value in (
        ("url", source.url),
        ("ref", source.ref),
        ("kickstart_path", source.kickstart_path),
    ):
        if value.startswith("-"):
            raise SourceError(
                f"{what} {value[:200]!r} starts with '-', which git reads as an option"
            )
        if _UNSAFE.search(value):
            raise SourceError(f"{what} {value[:200]!r} holds a space or a control character")
    kind = transport(source.url)
    if kind not in allowed:
        raise SourceError(
            f"url {source.url[:200]!r} uses the {kind!r} transport; this builder fetches only "
            f"over {', '.join(allowed)} (git_schemes in its config)"
        )


def fetch(
    source: GitSource | InlineSource,
    workdir: Path,
    log: IO[str],
    schemes: Iterable[str] = ("https", "ssh", "git"),
) -> KickstartSource:
    """Materialise the request's kickstart under ``workdir``; git sources only over
    ``schemes``."""
    if isinstance(source, InlineSource):
        file = workdir / "inline.ks"
        file.write_text(source.kickstart, encoding="utf-8")
        return KickstartSource(source.kickstart, "inline.ks", file, None, None)
    schemes = tuple(schemes)
    check_git_source(source, schemes)
    checkout = workdir / "src"
    commit = clone(source.url, source.commit or source.ref, checkout, log, schemes)
    if source.commit and not commit.startswith(source.commit):
        raise SourceError(f"checked out {commit} but the request pinned {source.commit}")
    rel = Path(source.kickstart_path)
    target = (checkout / rel).resolve()
    if rel.is_absolute() or not target.is_relative_to(checkout.resolve()):
        raise SourceError(f"kickstart_path {source.kickstart_path!r} leaves the repository")
    if not target.is_file():
        raise SourceError(
            f"{source.kickstart_path} does not exist in {source.url} at {commit[:12]}"
        )
    text = target.read_text(encoding="utf-8")
    return KickstartSource(text, source.kickstart_path, target, checkout.resolve(), commit)


def pick_commit(listing: str, ref: str) -> str | None:
    """The commit ``ref`` names in ``git ls-remote`` output, by git's own order of lookup
    (``<ref>``, ``refs/<ref>``, ``refs/tags/<ref>``, ``refs/heads/<ref>``); an annotated tag
    gives the commit it points at. None when no ref has that name."""
    refs: dict[str, str] = {}
    for line in listing.splitlines():
        sha, _, name = line.partition("\t")
        if _FULL_SHA.match(sha) and name:
            refs[name] = sha
    for name in (ref, f"refs/{ref}", f"refs/tags/{ref}", f"refs/heads/{ref}"):
        if name in refs:
            return refs.get(f"{name}^{{}}", refs[name])
    return None


def resolve_ref(
    url: str, ref: str, log: IO[str], schemes: Iterable[str] = ("https", "ssh", "git")
) -> str:
    """The commit ``ref`` names in ``url`` now: what makes an unpinned request's identity, so
    a push that changed the kickstart is a new build and never gets the previous image."""
    if _FULL_SHA.match(ref):
        return ref
    if _SHA.match(ref):
        raise SourceError(
            f"ref {ref!r} looks like an abbreviated commit id: pin the full id as 'commit', "
            "or name a branch or tag"
        )
    git = ["git", *_protocols(schemes)]
    try:
        out = run([*git, "ls-remote", "--", url, ref, f"{ref}^{{}}"], log, env=GIT_ENV, timeout=120)
    except CommandError as exc:
        raise _fetch_error(exc, url, ref) from exc
    commit = pick_commit(out, ref)
    if commit is None:
        raise SourceError(f"{url} has no branch or tag {ref!r}")
    return commit


def _protocols(schemes: Iterable[str]) -> list[str]:
    """git options that allow only ``schemes`` as transports."""
    options = ["-c", "protocol.allow=never"]
    for scheme in sorted(set(schemes)):
        options += ["-c", f"protocol.{scheme}.allow=always"]
    return options


def _fetch_error(exc: CommandError, url: str, ref: str) -> SourceError | SourceUnavailableError:
    text = f"{exc}".lower()
    hint = (
        " (a bare commit id needs a server that allows fetching by id; pin a branch or tag)"
        if _SHA.match(ref)
        else ""
    )
    if any(marker in text for marker in _PERMANENT):
        return SourceError(f"cannot fetch {ref!r} from {url}: {exc.tail or exc}{hint}")
    return SourceUnavailableError(f"git fetch from {url} failed: {exc.tail or exc}")


def clone(
    url: str, ref: str, dest: Path, log: IO[str], schemes: Iterable[str] = ("https", "ssh", "git")
) -> str:
    """Shallow-fetch exactly ``ref`` (branch, tag, HEAD or commit) into ``dest``; return the
    commit id. Only one commit's objects are transferred, whatever the history."""
    dest.mkdir(parents=True, exist_ok=True)
    git = ["git", "-C", str(dest), *_protocols(schemes)]
    try:
        run([*git, "init", "-q"], log, env=GIT_ENV)
        run([*git, "remote", "add", "origin", "--", url], log, env=GIT_ENV)
        run(
            [*git, "-c", "protocol.version=2", "fetch", "-q", "--depth=1", "origin", "--", ref],
            log,
            env=GIT_ENV,
            timeout=600,
        )
        run([*git, "checkout", "-q", "--detach", "FETCH_HEAD"], log, env=GIT_ENV)
        out = run([*git, "rev-parse", "HEAD"], log, env=GIT_ENV)
    except CommandError as exc:
        raise _fetch_error(exc, url, ref) from exc
    return out.strip()
