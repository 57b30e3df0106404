"""A private RabbitMQ node for the demo and the tests, started as a child process.

Everything the node writes lives under one directory, it listens on loopback only, on ports
picked free at start, so several can run beside a system broker. It is set up like a deployed
broker: the pipeline's definitions are loaded at boot (the ``imgline`` vhost, one user per
service with its permissions, the shared topology), every user has a random password, and
there is no ``guest``. With ``tls`` it also listens for ``amqps://`` with certificates from a
throwaway CA and requires a client certificate. ``IMGLINE_AMQP_URL`` makes callers use an
existing broker instead (see ``broker_access``).
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pika
import pika.exceptions

from imgline.core.bus import access
from imgline.core.bus.topology import pipeline_definitions
from imgline.core.errors import BrokerUnavailableError
from imgline.core.localca import Issued, LocalCA

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "install it with 'apt-get install rabbitmq-server' (Debian) or 'dnf install rabbitmq-server'"
)
RUN_AS = "rabbitmq"
#: How long a delivery may stay unacknowledged (a build takes up to 2 h): as in
#: deploy/rabbitmq/rabbitmq.conf, where a test keeps the two equal.
CONSUMER_TIMEOUT_MS = 6 * 3600 * 1000


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _check_reachable(directory: Path, uid: int) -> None:
    """The node runs as ``rabbitmq``: every parent of its directory must let that user in."""
    for parent in directory.resolve().parents:
        st = parent.stat()
        if st.st_uid != uid and not st.st_mode & 0o001:
            raise BrokerUnavailableError(
                f"user {RUN_AS} cannot enter {parent} (mode {st.st_mode & 0o777:o}), so the "
                f"broker cannot use {directory}: pick a directory under /tmp or /var/tmp"
            )


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class PrivateBroker:
    """One RabbitMQ node in ``base_dir`` (a fresh temp dir by default); restartable in place.

    Use as a context manager, or ``start()``/``stop()``. ``url`` is its AMQP URL.
    """

    def __init__(
        self,
        base_dir: Path | None = None,
        start_timeout: float = 90.0,
        consumer_timeout_ms: int = CONSUMER_TIMEOUT_MS,
        *,
        tls: bool = False,
        passwords: Mapping[str, str] | None = None,
    ) -> None:
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="imgline-rabbitmq-"))
        self.port = free_port()
        self.dist_port = free_port()
        while self.dist_port == self.port:
            self.dist_port = free_port()
        self.nodename = f"imgline-{uuid.uuid4().hex[:8]}@localhost"
        self.start_timeout = start_timeout
        self.consumer_timeout_ms = consumer_timeout_ms
        self.tls = tls
        self.tls_port = free_port() if tls else None
        #: One random password per user, kept for the node's lifetime (restarts reuse them);
        #: ``passwords`` keeps the ones a client was provisioned with earlier (a test host
        #: installed once, with its updater's credentials on its disk).
        given = dict(passwords or {})
        unknown = given.keys() - {access.ADMIN, *access.ROLE_BY_USER}
        if unknown:
            raise ValueError(f"no such bus user: {', '.join(sorted(unknown))}")
        self.passwords = {
            user: given.get(user) or secrets.token_urlsafe(18)
            for user in (access.ADMIN, *access.ROLE_BY_USER)
        }
        self.ca: LocalCA | None = None
        self.client_certs: dict[str, Issued] = {}
        self._server_cert: Issued | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The administrator's URL: every permission, for setup and inspection."""
        return self.url_for(access.ADMIN)

    def url_for(self, user: str) -> str:
        """``user``'s plain AMQP URL in the pipeline's vhost."""
        return f"amqp://{user}:{self.passwords[user]}@127.0.0.1:{self.port}/{access.VHOST}"

    def tls_url_for(self, user: str) -> str:
        """``user``'s ``amqps://`` URL; the broker's certificate names ``localhost``."""
        if self.tls_port is None:
            raise BrokerUnavailableError("this private broker was started without tls=True")
        return f"amqps://{user}:{self.passwords[user]}@localhost:{self.tls_port}/{access.VHOST}"

    def _env(self) -> dict[str, str]:
        d = self.base_dir
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_PID_FILE=str(d / "rabbitmq.pid"),
            RABBITMQ_FEATURE_FLAGS_FILE=str(d / "feature_flags"),
            RABBITMQ_QUORUM_DIR=str(d / "quorum"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
        )
        return env

    def _prepare(self) -> None:
        if shutil.which("rabbitmq-server") is None:
            raise BrokerUnavailableError(f"rabbitmq-server is not on PATH: {INSTALL_HINT}")
        d = self.base_dir
        for sub in ("mnesia", "log", "quorum"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "enabled_plugins").write_text("[].\n")
        (d / "rabbitmq-env.conf").write_text("")
        (d / "advanced.config").write_text("[].\n")
        definitions = d / "definitions.json"
        definitions.write_text(
            json.dumps(pipeline_definitions(passwords=self.passwords, admin=True), indent=1)
        )
        (d / "rabbitmq.conf").write_text(
            f"load_definitions = {definitions}\n"
            f"consumer_timeout = {self.consumer_timeout_ms}\n"
            "log.console = false\n"
            "log.file.level = info\n" + self._tls_conf()
        )
        if os.geteuid() == 0:
            # As root, Debian's wrapper re-executes as user 'rabbitmq', which must own the dir.
            try:
                pw = pwd.getpwnam(RUN_AS)
            except KeyError:
                return
            _check_reachable(d, pw.pw_uid)
            os.chown(d, pw.pw_uid, pw.pw_gid)
            for root, dirs, files in os.walk(d):
                for name in dirs + files:
                    os.chown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)

    def _tls_conf(self) -> str:
        """A TLS listener that verifies clients: no certificate from our CA, no connection."""
        if not self.tls:
            return ""
        if self.ca is None or self._server_cert is None:
            self.ca = LocalCA(self.base_dir / "tls")
            self._server_cert = self.ca.issue("broker", server=True)
            self.client_certs = {user: self.ca.issue(user, server=False) for user in self.passwords}
        server = self._server_cert
        return (
            f"listeners.ssl.default = 127.0.0.1:{self.tls_port}\n"
            f"ssl_options.cacertfile = {self.ca.cert_path}\n"
            f"ssl_options.certfile = {server.cert}\n"
            f"ssl_options.keyfile = {server.key}\n"
            "ssl_options.verify = verify_peer\n"
            "ssl_options.fail_if_no_peer_cert = true\n"
        )

    def start(self) -> PrivateBroker:
        """Start the node and wait until it accepts AMQP logins."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        self._prepare()
        out = (self.base_dir / "server.out").open("ab")
        log.info(
            "starting private RabbitMQ %s on 127.0.0.1:%d in %s",
            self.nodename,
            self.port,
            self.base_dir,
        )
        self._proc = subprocess.Popen(
            ["rabbitmq-server"],  # noqa: S607
            env=self._env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.base_dir,
        )
        out.close()
        self._wait_ready()
        return self

    def _log_tail(self) -> str:
        texts = []
        for path in [self.base_dir / "server.out", *sorted((self.base_dir / "log").glob("*.log"))]:
            try:
                texts.append(
                    f"--- {path.name}\n"
                    + "\n".join(path.read_text(errors="replace").splitlines()[-15:])
                )
            except OSError:
                continue
        return "\n".join(texts)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        params = pika.URLParameters(self.url + "?connection_attempts=1&socket_timeout=2")
        while True:
            if self._proc is None:
                raise BrokerUnavailableError("the private broker was stopped while starting")
            if self._proc.poll() is not None:
                raise BrokerUnavailableError(
                    f"rabbitmq-server exited with status {self._proc.returncode} while starting; "
                    f"logs in {self.base_dir}:\n{self._log_tail()}"
                )
            if _port_open(self.port):
                try:
                    pika.BlockingConnection(params).close()
                    log.info("private RabbitMQ %s ready on port %d", self.nodename, self.port)
                    return
                except pika.exceptions.AMQPError:
                    pass
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerUnavailableError(
                    f"rabbitmq-server did not accept AMQP on port {self.port} within "
                    f"{self.start_timeout:.0f}s; logs in {self.base_dir}:\n{self._log_tail()}"
                )
            time.sleep(0.3)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the node cleanly (``rabbitmqctl stop``), or kill its process group."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            subprocess.run(  # noqa: S603
                ["rabbitmqctl", "-n", self.nodename, "stop"],  # noqa: S607
                env=self._env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=timeout,
                check=False,
            )
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("rabbitmq node %s did not stop; killing it", self.nodename)
        self._kill_group(proc)
        self._proc = None

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes]) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.error("rabbitmq process group %d survived SIGKILL", proc.pid)

    def restart(self) -> None:
        """Stop and start the same node: same data, same port (queues and messages survive)."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop and, if this object made the directory, remove it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> PrivateBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


@dataclass(frozen=True)
class BrokerAccess:
    """How the processes of one run reach the broker: the administrator's URL for setup and
    inspection, and one URL per service user. On a broker given by ``IMGLINE_AMQP_URL`` that
    one URL serves everyone (its owner set up the users; docs/security.md)."""

    admin_url: str
    urls: Mapping[str, str]

    def url_for(self, user: str) -> str:
        return self.urls.get(user, self.admin_url)


@contextmanager
def broker_access(
    env: Mapping[str, str] | None = None, *, passwords: Mapping[str, str] | None = None
) -> Iterator[BrokerAccess]:
    """``$IMGLINE_AMQP_URL`` if set, else a private node (with its users) living for the block;
    ``passwords``: users of the private node whose passwords are given, not made up."""
    env = os.environ if env is None else env
    given = env.get("IMGLINE_AMQP_URL")
    if given:
        yield BrokerAccess(given, {})
        return
    with PrivateBroker(passwords=passwords) as broker:
        yield BrokerAccess(broker.url, {u: broker.url_for(u) for u in access.ROLE_BY_USER})
