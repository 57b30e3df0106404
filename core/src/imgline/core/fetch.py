"""Getting an artefact named by URI onto local disk: ``file://`` in place, ``http(s)://`` by
streaming download. Every stage after the builder reads artefacts through this."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from imgline.core.errors import PermanentError, TransientError


def local_path(uri: str, workdir: Path, timeout: float = 300.0) -> Path:
    """A readable local path for ``uri`` (downloaded into ``workdir`` when remote)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        path = Path(urllib.parse.unquote(parsed.path))
        if not path.is_file():
            raise PermanentError(f"artifact {uri} does not exist on this host")
        return path
    if parsed.scheme in ("http", "https"):
        name = Path(urllib.parse.unquote(parsed.path)).name or "artifact"
        dest = workdir / name
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            with urllib.request.urlopen(uri, timeout=timeout) as resp, tmp.open("wb") as out:  # noqa: S310 - scheme checked above
                shutil.copyfileobj(resp, out, length=1 << 20)
        except urllib.error.HTTPError as exc:
            tmp.unlink(missing_ok=True)
            if 400 <= exc.code < 500:
                raise PermanentError(f"artifact {uri}: HTTP {exc.code} {exc.reason}") from exc
            raise TransientError(f"artifact {uri}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            tmp.unlink(missing_ok=True)
            raise TransientError(f"artifact {uri} could not be downloaded: {exc}") from exc
        tmp.replace(dest)
        return dest
    raise PermanentError(f"artifact URI {uri!r} has an unsupported scheme (file, http, https)")
