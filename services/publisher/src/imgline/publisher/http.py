"""Serve a published TUF repository over HTTP, for tests, demos and small sites.

Real deployments put nginx in front of the same directory (deploy/nginx/imgline-repo.conf sends
the same headers). This server lets a host or anaconda fetch from a publisher without extra
software, and lets the end-to-end tests exercise what clients rely on:

- Hosts and anaconda download multi-GB images and resume a cut download with ``Range`` and
  ``If-Range``; caches revalidate with ``ETag``/``If-None-Match`` (304). aiohttp's
  ``FileResponse`` implements all of that (and ``sendfile``); this module does not.
- With consistent snapshots every file is written once under a name that changes with its
  content (``metadata/<N>.<role>.json``, ``targets/.../<sha256>.<name>``), so caches may keep
  it forever. Only ``metadata/timestamp.json`` is replaced (by rename) on each publish, so it
  is revalidated before every use.
- Only ``metadata/`` and ``targets/`` are served. Dot-paths (the publisher's ``.state/``, its
  ``.tmp-*`` staging files), directories, anything resolving outside the root: 404, the same
  as a missing file, so probing learns nothing.

What this module adds to aiohttp: which paths may be served, the cache headers, content types,
a strong-ETag ``If-Range`` (aiohttp only understands the date form), and a log line per request
that a client-controlled path cannot forge.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger, AbstractStreamWriter
from multidict import CIMultiDict

log = logging.getLogger(__name__)

IMMUTABLE = "public, max-age=31536000, immutable"
NO_CACHE = "no-cache"
SERVED = frozenset({"metadata", "targets"})
TIMESTAMP = ("metadata", "timestamp.json")
CONTENT_TYPES = {".json": "application/json", ".ks": "text/plain; charset=utf-8"}
ALLOW = "GET, HEAD"
SHUTDOWN_GRACE = 2.0
"""Seconds a stopping server gives requests in flight; a cut image download is resumed."""


@dataclass(frozen=True)
class RunningServer:
    url: str
    port: int


class _RepositoryFile(web.FileResponse):
    """A published file: aiohttp answers the request, minus what it must not act on."""

    def __init__(self, path: Path, st: os.stat_result, content_type: str, cache: str) -> None:
        super().__init__(path, headers={hdrs.CONTENT_TYPE: content_type})
        self.cache_control = cache
        self.interrupted = False
        # the strong validator FileResponse sends, from the same mtime and size
        self._etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        try:
            return await super().prepare(request.clone(headers=self._conditions(request)))
        except ConnectionError:  # the client went away; it resumes with Range
            self.interrupted = True
            raise

    def _conditions(self, request: web.BaseRequest) -> CIMultiDict[str]:
        """The request headers FileResponse acts on, less what it must not act on.

        - ``Accept-Encoding`` is left out: aiohttp would send a ``.gz``/``.br`` sibling.
        - ``Range`` goes on HEAD (only GET has range semantics) and with several ranges
          (aiohttp would answer 416; nginx, with ``max_ranges 1``, the whole file).
        - ``Range`` goes when ``If-Range`` holds an entity tag other than the file's strong
          one: aiohttp reads ``If-Range`` only as a date and would send a range of whatever
          the file is now. (Content-addressed files never change; timestamp.json does.)
        """
        headers = CIMultiDict(
            (name, value)
            for name in _CONDITIONS
            for value in request.headers.getall(name, ())
            if value.isascii()  # clone() re-encodes; a valid value is ASCII anyway
        )
        if_range = headers.get(hdrs.IF_RANGE, "").strip()
        stale = if_range.startswith(('"', "W/")) and if_range != self._etag
        if request.method != hdrs.METH_GET or "," in headers.get(hdrs.RANGE, "") or stale:
            headers.popall(hdrs.RANGE, None)
        return headers


_CONDITIONS = (
    hdrs.RANGE,
    hdrs.IF_RANGE,
    hdrs.IF_MATCH,
    hdrs.IF_NONE_MATCH,
    hdrs.IF_MODIFIED_SINCE,
    hdrs.IF_UNMODIFIED_SINCE,
)


class _AccessLog(AbstractAccessLogger):
    """``<client> <method> <path> <status> <length> <seconds>``, the path escaped.

    The length is the body's (aiohttp sends files with ``sendfile`` and does not count them),
    or ``interrupted`` when the client hung up during the body.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if isinstance(response, _RepositoryFile) and response.interrupted:
            length = "interrupted"
        else:
            empty = request.method == hdrs.METH_HEAD or response.status == 304
            length = str(0 if empty else response.content_length or 0)
        self.logger.info(
            "%s %s %s %d %s %.3fs",
            request.remote,
            _printable(request.method),
            _printable(request.raw_path),
            response.status,
            length,
            time,
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def _printable(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii")


def _served(parts: tuple[str, ...]) -> bool:
    """Whether a path, as requested or as resolved, names something the repository publishes."""
    return (
        len(parts) >= 2
        and parts[0] in SERVED
        and all(part and not part.startswith(".") for part in parts)
    )


def _locate(root: Path, path: str) -> tuple[Path, os.stat_result, str] | None:
    """The regular file ``path`` names under ``root``, its status and cache policy, if served."""
    parts = tuple(path.split("/"))
    if not _served(parts) or "\0" in path:
        return None
    try:
        real = root.joinpath(*parts).resolve(strict=True)
        st = real.stat()
    except (OSError, RuntimeError):  # missing, through a file, a symlink loop
        return None
    if not real.is_relative_to(root):
        log.warning("refused %s: it resolves outside the repository", _printable(path))
        return None
    inside = real.relative_to(root).parts
    if not (_served(inside) and stat.S_ISREG(st.st_mode)):
        return None
    mutable = TIMESTAMP in (parts, inside)  # also through a link to or from timestamp.json
    return real, st, NO_CACHE if mutable else IMMUTABLE


def _make_app(root: Path) -> web.Application:
    real_root = Path(root).resolve()
    if not real_root.is_dir():
        raise NotADirectoryError(f"repository root {root} is not a directory")

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
            return web.Response(
                status=405, text="405: Method Not Allowed", headers={"Allow": ALLOW}
            )
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(None, _locate, real_root, request.match_info["path"])
        if found is None:
            raise web.HTTPNotFound()
        real, st, cache = found
        content_type = CONTENT_TYPES.get(Path(request.match_info["path"]).suffix)
        return _RepositoryFile(real, st, content_type or "application/octet-stream", cache)

    async def set_headers(request: web.Request, response: web.StreamResponse) -> None:
        cache = NO_CACHE  # errors (404, 405, 412, 416) are not the file
        if isinstance(response, _RepositoryFile) and response.status in (200, 206, 304):
            cache = response.cache_control
        response.headers[hdrs.CACHE_CONTROL] = cache
        response.headers[hdrs.SERVER] = "imgline-publisher"

    app = web.Application()
    app.router.add_route(hdrs.METH_ANY, "/{path:.*}", handle)
    app.on_response_prepare.append(set_headers)
    return app


def _listen(host: str, port: int) -> socket.socket:
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


async def _serve(
    app: web.Application, sock: socket.socket, started: Callable[[asyncio.Event], None]
) -> None:
    """Serve on ``sock`` until the event handed to ``started`` is set."""
    stop = asyncio.Event()
    runner = web.AppRunner(
        app, access_log=log, access_log_class=_AccessLog, shutdown_timeout=SHUTDOWN_GRACE
    )
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
        started(stop)
        await stop.wait()
    finally:
        await runner.cleanup()
        sock.close()


@contextlib.contextmanager
def running(root: Path, host: str = "127.0.0.1", port: int = 0) -> Iterator[RunningServer]:
    """Serve ``root`` on a background thread (own asyncio loop) while the with-block runs.

    Port 0 picks a free port. The server is listening when the block starts and closed, its
    thread ended, when the block ends.
    """
    app = _make_app(root)
    sock = _listen(host, port)
    server = RunningServer(_url(sock), sock.getsockname()[1])
    ready: concurrent.futures.Future[tuple[asyncio.AbstractEventLoop, asyncio.Event]]
    ready = concurrent.futures.Future()

    def started(stop: asyncio.Event) -> None:
        ready.set_result((asyncio.get_running_loop(), stop))

    def run() -> None:
        try:
            asyncio.run(_serve(app, sock, started))
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            else:
                log.exception("HTTP server at %s failed", server.url)

    thread = threading.Thread(target=run, name=f"imgline-http-{server.port}", daemon=True)
    thread.start()
    try:
        loop, stop = ready.result()
    except BaseException:
        thread.join()
        sock.close()
        raise
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join()


def serve_forever(root: Path, host: str = "127.0.0.1", port: int = 8090) -> None:
    """Serve ``root`` until SIGTERM or SIGINT, then close the listening socket and return.

    Signals are caught only when called on the main thread.
    """
    app = _make_app(root)
    sock = _listen(host, port)
    url = _url(sock)

    def on_signal(signum: signal.Signals, stop: asyncio.Event) -> None:
        log.info("%s received, stopping", signum.name)
        stop.set()

    def started(stop: asyncio.Event) -> None:
        if threading.current_thread() is threading.main_thread():
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, on_signal, signum, stop)
        log.info("serving %s at %s", root, url)

    asyncio.run(_serve(app, sock, started))
    log.info("stopped serving %s at %s", root, url)
