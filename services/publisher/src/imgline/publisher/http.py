"""A static HTTP server for a published repository, for tests, demos and small sites.

Real deployments put nginx in front of the same directory (deploy/nginx/imgline-repo.conf, with
the same headers). This server exists so that a host or anaconda can fetch images from a
publisher without extra software, and so the end-to-end tests exercise what clients rely on:
resumable multi-GB downloads (``Range``, ``If-Range``), validators (``ETag``, ``304``), the
cache split between immutable ``images/`` and revalidated ``streams/``, and never serving a
half-written ``.tmp-*`` file or anything outside the root. What to answer is decided by
``imgline.publisher.domain.ranges``; this module only opens files and moves bytes.
"""

from __future__ import annotations

import io
import logging
import os
import re
import signal
import socket
import socketserver
import stat
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import Any

from imgline.publisher.domain import ranges

#: The index generation directories the publisher swaps stream symlinks between.
_GENERATION = re.compile(r"\.[A-Za-z0-9][A-Za-z0-9._-]*\.gen-\d+")
log = logging.getLogger(__name__)

CHUNK = 1 << 20
"""Read size when ``os.sendfile`` is unavailable: large enough to be cheap, small enough to
keep a multi-GB body out of memory."""

_TEXT = "text/plain; charset=utf-8"


class RepositoryServer(ThreadingHTTPServer):
    """Serves the files under ``root``; ``port`` and ``url`` say where it listens.

    Shutting down does not wait for downloads in flight (``block_on_close``): an image can
    take minutes to send, and clients resume it with ``Range`` once the server is back.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(self, root: Path, address: tuple[str, int]) -> None:
        self.root = root
        self.use_sendfile = hasattr(os, "sendfile")
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, RepositoryHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall on a broken resolver
        socketserver.TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    @property
    def port(self) -> int:
        return self.server_port

    @property
    def url(self) -> str:
        host = self.server_name
        return f"http://[{host}]:{self.port}/" if ":" in host else f"http://{host}:{self.port}/"

    def handle_error(self, request: object, client_address: object) -> None:
        """Log what escaped a handler instead of printing a traceback to stderr."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            log.debug("connection from %s ended: %s", client_address, exc)
            return
        log.exception("error while serving %s", client_address)


def _printable(text: str) -> str:
    """A request path is client-controlled: escape it so it cannot forge or colour log lines."""
    return text.encode("unicode_escape").decode("ascii")


class RepositoryHandler(BaseHTTPRequestHandler):
    """GET and HEAD of the repository's files; every other method is refused."""

    server: RepositoryServer
    protocol_version = "HTTP/1.1"
    server_version = "imgline-publisher"
    sys_version = ""
    timeout = 60.0  # an idle keep-alive connection or a stalled client frees its thread

    _status: int | None = None
    _sent = 0

    # -- logging: one line per request, through `logging`, with the body bytes really sent --

    def handle_one_request(self) -> None:
        self._status = None
        self._sent = 0
        self.command = ""
        self.path = ""
        try:
            super().handle_one_request()
        finally:
            if self._status is not None:
                log.info(
                    "%s %s %d %d",
                    self.command or "-",
                    _printable(self.path) or "-",
                    self._status,
                    self._sent,
                )

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if isinstance(code, int):
            self._status = int(code)

    def log_message(self, format: str, *args: Any) -> None:
        # the stdlib's own notes (bad request lines, timeouts); the request line is logged above
        log.debug(format, *args)

    # -- methods --

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def _method_not_allowed(self) -> None:
        # a body we do not read would be taken for the next request on this connection
        self.close_connection = True
        self._plain(405, "method not allowed\n", {"Allow": "GET, HEAD"})

    # Methods HTTP defines get 405; ones it does not are 501 (the stdlib's default), which is
    # what RFC 9110 section 15.6.2 asks for a method the server does not recognise.
    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = (
        _method_not_allowed
    )

    # -- the file --

    def _header(self, name: str) -> str | None:
        """All fields of that name joined as one list, as RFC 9110 section 5.3 defines."""
        values = self.headers.get_all(name)
        return ", ".join(values) if values else None

    def _has_body(self) -> bool:
        length = self.headers.get("Content-Length", "").strip()
        return bool(self.headers.get("Transfer-Encoding")) or length not in ("", "0")

    def _serve(self) -> None:
        if self._has_body():
            self.close_connection = True  # a body is never read, so the connection cannot go on
        parts = ranges.request_path_parts(self.path)
        if parts is None:
            self._plain(404, "not found\n")
            return
        opened = self._open(parts)
        if opened is None:
            self._plain(404, "not found\n")
            return
        file, st, policy = opened
        with file:
            self._respond(file, st, policy, parts[-1])

    def _open(self, parts: tuple[str, ...]) -> tuple[io.FileIO, os.stat_result, str] | None:
        """The regular file ``parts`` names under the root, its status and its cache policy."""
        relative = self._locate(parts)
        if relative is None:
            return None
        opened = self._open_regular(self.server.root / relative)
        if opened is None:
            return None
        policy = ranges.cache_control("/".join(parts))
        if policy != ranges.cache_control(relative.as_posix()):
            policy = ranges.NO_CACHE  # a link from images/ to a mutable file is not immutable
        return (*opened, policy)

    def _locate(self, parts: tuple[str, ...]) -> PurePosixPath | None:
        """Where ``parts`` really leads, relative to the root, if it may be served at all.

        Symbolic links are followed only while they stay inside the root and lead to no
        dot-file, except a stream's index generation directory (``streams/.<stream>.gen-<n>``,
        which ``streams/<stream>`` links to); anything else is reported as missing, so
        probing learns nothing.
        """
        root = self.server.root
        try:
            real = root.joinpath(*parts).resolve(strict=True)
        except (OSError, RuntimeError):  # missing, not a directory, a symlink loop
            return None
        if not real.is_relative_to(root):
            log.warning("refused %s: it resolves outside the repository", "/".join(parts))
            return None
        relative = PurePosixPath(real.relative_to(root).as_posix())
        hidden = [part for part in relative.parts if part.startswith(".")]
        parts = relative.parts
        in_generation = (
            len(parts) == 3 and parts[0] == "streams" and _GENERATION.fullmatch(parts[1])
        )
        if hidden and not (in_generation and hidden == [parts[1]]):
            return None
        return relative

    @staticmethod
    def _open_regular(path: Path) -> tuple[io.FileIO, os.stat_result] | None:
        """Open ``path`` if it is a regular file, and describe what was opened.

        Answering from the open descriptor (``fstat``) means a publish that renames a new
        index into place meanwhile cannot mix two versions into one response.
        """
        try:
            # O_NOFOLLOW: the path was resolved, so a link now is a swap under our feet;
            # O_NONBLOCK: opening a FIFO someone left in the tree must not hang the thread
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except PermissionError:
            log.warning("cannot read %s: permission denied", path)
            return None
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            regular = stat.S_ISREG(st.st_mode)  # not a directory, device or FIFO
        except OSError:
            regular = False
        if not regular:
            os.close(fd)
            return None
        return io.FileIO(fd, "rb"), st

    def _respond(self, file: io.FileIO, st: os.stat_result, policy: str, name: str) -> None:
        size = st.st_size
        etag = ranges.make_etag(size, st.st_mtime_ns, st.st_ino)
        modified = ranges.http_date(st.st_mtime)
        headers = {"ETag": etag, "Last-Modified": modified, "Cache-Control": policy}
        if ranges.not_modified(
            self._header("If-None-Match"), self._header("If-Modified-Since"), etag, st.st_mtime
        ):
            del headers["Last-Modified"]  # RFC 9110 section 15.4.5: validators, not metadata
            self._head(304, headers, None)
            return

        # RFC 9110 section 14.2: GET is the only method with range semantics
        decision: ranges.RangeResult = (
            ranges.parse_range(self._header("Range"), size)
            if self.command == "GET"
            else ranges.WholeFile("absent")
        )
        if not isinstance(decision, ranges.WholeFile) and not ranges.if_range_allows(
            self._header("If-Range"), etag, modified
        ):
            decision = ranges.WholeFile("if-range")
        headers["Accept-Ranges"] = "bytes"
        if isinstance(decision, ranges.Unsatisfiable):
            headers["Content-Range"] = decision.content_range
            self._plain(416, "range not satisfiable\n", headers)
            return
        headers["Content-Type"] = ranges.content_type(name)
        if isinstance(decision, ranges.ByteRange):
            headers["Content-Range"] = decision.content_range
            status, offset, length = 206, decision.start, decision.length
        else:
            status, offset, length = 200, 0, size
        self._head(status, headers, length)
        if self.command == "GET" and length:
            self._body(file, offset, length)

    def _body(self, file: io.FileIO, offset: int, length: int) -> None:
        file.seek(offset)
        try:
            if self.server.use_sendfile:
                # socket.sendfile drives os.sendfile and honours the socket timeout
                try:
                    self.connection.sendfile(file, offset, length)
                finally:
                    self._sent = file.tell() - offset
            else:
                self._copy(file, length)
        except (ConnectionError, TimeoutError) as exc:
            self.close_connection = True
            log.debug("client went away after %d of %d bytes: %s", self._sent, length, exc)
            return
        if self._sent < length:
            # the file shrank under us; the client is owed bytes we cannot send, so end the
            # connection rather than let it read the next response as body
            self.close_connection = True
            log.warning(
                "%s: sent %d of %d bytes, file shrank", _printable(self.path), self._sent, length
            )

    def _copy(self, file: io.FileIO, length: int) -> None:
        while self._sent < length:
            chunk = file.read(min(CHUNK, length - self._sent))
            if not chunk:
                return
            self.wfile.write(chunk)
            self._sent += len(chunk)

    # -- responses --

    def _head(self, status: int, headers: dict[str, str], length: int | None) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if length is not None:
            self.send_header("Content-Length", str(length))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _plain(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        body = text.encode("utf-8")
        fields = {"Cache-Control": ranges.NO_CACHE, **(headers or {}), "Content-Type": _TEXT}
        self._head(status, fields, len(body))
        if self.command != "HEAD":
            self.wfile.write(body)
            self._sent = len(body)


def make_server(root: Path, host: str = "127.0.0.1", port: int = 0) -> RepositoryServer:
    """A server for the repository at ``root``, bound but not yet serving.

    Port 0 picks a free port (read it from ``.port``). Run it with ``serve_forever()`` on a
    thread and stop it with ``shutdown()`` and ``server_close()``.
    """
    real = Path(root).resolve()
    if not real.is_dir():
        raise NotADirectoryError(f"repository root {root} is not a directory")
    return RepositoryServer(real, (host, port))


def serve_forever(root: Path, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve ``root`` until SIGTERM or SIGINT, then close the listening socket and return."""
    server = make_server(root, host, port)

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("%s received, stopping", signal.Signals(signum).name)
        # shutdown() waits for the serve loop, which runs on this very thread
        threading.Thread(target=server.shutdown, name="http-shutdown", daemon=True).start()

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, stop)
    log.info("serving %s at %s", server.root, server.url)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        log.info("stopped serving %s", server.root)
