"""Getting an artefact named by URI onto local disk: ``file://`` in place, ``http(s)://`` by
streaming download. Every stage after the builder reads artefacts through this.

The URI comes from a bus message, so it is treated as hostile (docs/security.md): it must
name a file under one of the configured store roots (symbolic links resolved) or start with
one of the configured URL prefixes; a download stops at the announced size and at an overall
deadline, and redirects are not followed (they could lead anywhere).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, Field

from imgline.core.artifacts import SAFE_NAME
from imgline.core.errors import PermanentError, TransientError
from imgline.schemas import payloads as p

CHUNK = 1 << 20


@dataclass(frozen=True)
class ArtifactSources:
    """Where a stage accepts artefacts from: files under ``roots``, URLs under ``url_prefixes``."""

    roots: tuple[Path, ...] = ()
    url_prefixes: tuple[str, ...] = ()

    @classmethod
    def of(cls, roots: Iterable[Path], url_prefixes: Iterable[str] = ()) -> ArtifactSources:
        prefixes = tuple(p if p.endswith("/") else p + "/" for p in url_prefixes)
        return cls(tuple(roots), prefixes)


def refusal(uri: str, sources: ArtifactSources) -> str | None:
    """Why ``uri`` may not be read (None when it may); no file system access."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme == "file":
        return _file_refusal(uri, parsed, sources)
    if parsed.scheme in ("http", "https"):
        return _url_refusal(uri, parsed, sources)
    return f"artifact URI {uri!r} has an unsupported scheme (file, http, https)"


def _file_refusal(
    uri: str, parsed: urllib.parse.SplitResult, sources: ArtifactSources
) -> str | None:
    if parsed.netloc not in ("", "localhost"):
        return f"artifact URI {uri!r} names another host"
    if not sources.roots:
        return f"artifact URI {uri!r}: this stage reads no local files (no store root set)"
    return None


def _url_refusal(
    uri: str, parsed: urllib.parse.SplitResult, sources: ArtifactSources
) -> str | None:
    problem = None
    if parsed.username is not None or parsed.password is not None:
        problem = "carries credentials"
    elif parsed.fragment:
        problem = "has a fragment"
    elif ".." in PurePosixPath(urllib.parse.unquote(parsed.path)).parts or "\\" in uri:
        problem = "climbs out of its directory"
    elif not any(uri.startswith(prefix) for prefix in sources.url_prefixes):
        allowed = ", ".join(sources.url_prefixes) or "none are configured"
        problem = f"is not under an allowed URL prefix ({allowed})"
    return None if problem is None else f"artifact URI {uri!r} {problem}"


def _local(uri: str, sources: ArtifactSources) -> Path:
    raw = Path(urllib.parse.unquote(urllib.parse.urlsplit(uri).path))
    try:
        path = raw.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise PermanentError(f"artifact {uri} does not exist on this host") from exc
    for root in sources.roots:
        if path.is_relative_to(root.resolve()):
            if not path.is_file():
                raise PermanentError(f"artifact {uri} is not a regular file")
            return path
    roots = ", ".join(str(r) for r in sources.roots)
    raise PermanentError(f"artifact {uri} is outside the artifact store ({roots})")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect could lead outside the allowed prefixes: it is an error, not followed."""

    def redirect_request(  # noqa: PLR0917 - urllib's signature
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        raise urllib.error.HTTPError(
            req.full_url, code, f"redirect to {newurl} not followed", headers, fp
        )


_OPENER = urllib.request.build_opener(_NoRedirects)


def _download(uri: str, dest: Path, size: int | None, deadline: float, timeout: float) -> None:
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        with _OPENER.open(uri, timeout=timeout) as resp, tmp.open("wb") as out:
            got = 0
            while chunk := resp.read1(CHUNK):  # what has arrived: the deadline holds
                got += len(chunk)
                if size is not None and got > size:
                    raise PermanentError(
                        f"artifact {uri}: the server sent more than the announced {size} bytes"
                    )
                if time.monotonic() > deadline:
                    raise TransientError(
                        f"artifact {uri}: the download did not finish in time ({got} bytes so far)"
                    )
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        tmp.unlink(missing_ok=True)
        if 300 <= exc.code < 500:  # a redirect not followed, or the request's own fault
            raise PermanentError(f"artifact {uri}: HTTP {exc.code} {exc.reason}") from exc
        raise TransientError(f"artifact {uri}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise TransientError(f"artifact {uri} could not be downloaded: {exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dest)


def local_path(
    uri: str,
    workdir: Path,
    sources: ArtifactSources,
    *,
    size: int | None = None,
    deadline_seconds: float = 1800.0,
    timeout: float = 300.0,
) -> Path:
    """A readable local path for ``uri``: in place under a store root, or downloaded into
    ``workdir`` from an allowed URL, at most ``size`` bytes within ``deadline_seconds``."""
    why = refusal(uri, sources)
    if why is not None:
        raise PermanentError(why)
    if urllib.parse.urlsplit(uri).scheme == "file":
        return _local(uri, sources)
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(uri).path)).name
    dest = workdir / (name if SAFE_NAME.fullmatch(name) else "artifact")
    # each socket wait is bounded too, so a server that goes silent meets the deadline
    wait = min(timeout, deadline_seconds)
    _download(uri, dest, size, time.monotonic() + deadline_seconds, wait)
    return dest


class ArtifactAccess(BaseModel):
    """The settings of a stage that reads artefacts named by messages (tester, publisher):
    its store, the URL prefixes it may download from, and how long a download may take.
    Services mix it into their ``[consumer_config]`` model."""

    store_dir: Path = Field(
        default=Path("/var/lib/imgline/artifacts"),
        description="the artifact store; files are read only from under it (docs/security.md)",
    )
    artifact_url_prefixes: list[str] = Field(
        default_factory=list,
        description="http(s) URL prefixes an artefact not in store_dir may be downloaded from",
    )
    download_deadline_seconds: float = Field(
        default=1800.0, gt=0, description="a download that takes longer is given up and retried"
    )

    def artifact_sources(self) -> ArtifactSources:
        return ArtifactSources.of([self.store_dir], self.artifact_url_prefixes)

    def fetch(self, artifact: p.Artifact, workdir: Path) -> Path:
        """``artifact`` on local disk, within these limits and its announced size."""
        return local_path(
            artifact.uri,
            workdir,
            self.artifact_sources(),
            size=artifact.size,
            deadline_seconds=self.download_deadline_seconds,
        )
