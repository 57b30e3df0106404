"""The whole imgline system on one machine: what ``make demo``, the end-to-end test
(tests/vm/test_end_to_end.py) and bench/pipeline.py run.

Everything is the real thing, wired as docs/operations.md deploys it:

- the builder, tester, publisher and ledger services, each logged in as its own bus user and
  serving its metrics (threads of this process, so one Ctrl-C stops them);
- the trigger as its own process (``imgline-trigger``) with one rule: pushes to ``main`` of the
  vendor repository that touch ``kickstarts/`` build the node image;
- the vendor repository: a bare git repository with deploy/git/post-receive installed, and a
  working clone. :meth:`System.push` commits and pushes; the hook signs the push event and
  posts it to the trigger, and nothing else starts a build;
- the TUF repository, served over HTTP on loopback;
- a test host (:func:`installed_host`): a disk installed by ``imgline-updater install`` in a
  helper guest, booted in qemu like a machine; its agent reaches the repository and the broker
  through qemu's guest forwards (tests/hostlab.py).

What makes a second run fast is kept under ``.cache/system/``: the signing keys with the empty
repository they signed (a vendor keeps its keys; a host installed with that root stays valid),
the host's updater password (the private broker is given it, as an admin provisions a host's
account once), and the installed host disk, keyed by everything on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pika
from hostimages import HostRelease, Recipe, derive
from hostlab import Services, config_toml, helper, install_script
from nodeimage import BUILD_USER, CACHE, node_image
from vmguest import Watcher, blank_disk, python_bundle_dir, sparse_copy, start_disk

from imgline.builder.__main__ import build_consumer as build_builder
from imgline.core.broker import BrokerAccess, free_port
from imgline.core.bus import Consumer, topology
from imgline.core.bus.access import ROLE_BY_USER
from imgline.core.config import BusSettings
from imgline.core.gitutil import commit_files, git
from imgline.core.trust.keys import KeyDir
from imgline.core.trust.repository import TufRepository
from imgline.core.userns import BuildUser
from imgline.ledger.__main__ import build_consumer as build_ledger
from imgline.publisher import http
from imgline.publisher.__main__ import build_consumer as build_publisher
from imgline.tester.__main__ import build_consumer as build_tester

REPO = Path(__file__).resolve().parents[1]
SYSTEM_CACHE = CACHE / "system"
#: where the trigger's rule finds the kickstart in the vendor repository
KICKSTART = "kickstarts/node.ks"
VENDOR_NAME = "node-os"
#: bump when installed_host() changes what it puts on the disk
INSTALL_RECIPE = "1"
log = logging.getLogger("imgline.system")


def updater_password() -> str:
    """The test host's password on the bus, made once: its disk holds it."""
    path = SYSTEM_CACHE / "host-updater.password"
    if not path.is_file():
        SYSTEM_CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".new")
        tmp.write_text(secrets.token_urlsafe(18))
        tmp.chmod(0o600)
        tmp.rename(path)
    return path.read_text().strip()


@dataclass(frozen=True)
class Dirs:
    """One run's directories (all under ``root``, which the build user may pass through)."""

    root: Path

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.sqlite3"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def vendor(self) -> Path:
        return self.root / "vendor"

    @property
    def host(self) -> Path:
        return self.root / "host"


def trust_dir() -> Path:
    """The signing keys and the empty repository they signed, made once and kept."""
    trust = SYSTEM_CACHE / "trust"
    if not (trust / "empty" / "metadata").is_dir():
        SYSTEM_CACHE.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".trust-", dir=SYSTEM_CACHE))
        TufRepository.init(tmp / "empty", KeyDir(tmp / "keys"), KeyDir(tmp / "root-keys"))
        shutil.rmtree(trust, ignore_errors=True)
        tmp.rename(trust)
    return trust


def fresh_repository(dest: Path) -> bytes:
    """An empty repository at ``dest`` signed with the kept keys; its root, as hosts pin it."""
    trust = trust_dir()
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(trust / "empty", dest)
    return TufRepository(dest, KeyDir(trust / "keys")).root_bytes()


@dataclass
class Event:
    """One message the system sent, as the run's watch queue got it."""

    topic: str  # without the prefix: build.requested, image.published.stable, ...
    body: dict[str, Any]
    at: float  # time.time() when it was read


@dataclass
class Running:
    consumer: Consumer
    thread: threading.Thread
    metrics_port: int


@dataclass
class Pushed:
    commit: str
    hook_output: str  # what git printed of the post-receive hook ("remote: imgline: ...")


@dataclass
class System:
    """A running system (see the module docstring); made by :func:`running_system`."""

    broker: BrokerAccess
    dirs: Dirs
    settings: BusSettings  # the builder's: exchange, prefix, dead letters
    base_url: str  # the repository, as this machine reaches it
    root: bytes  # the repository's root metadata
    hooks_url: str
    trigger_metrics_port: int
    services: dict[str, Running] = field(default_factory=dict)
    events_queue: str = ""
    seen: list[Event] = field(default_factory=list)
    _push_env: dict[str, str] = field(default_factory=dict)

    @property
    def exchange(self) -> str:
        return self.settings.exchange

    @property
    def metrics_ports(self) -> dict[str, int]:
        ports = {name: run.metrics_port for name, run in self.services.items()}
        return {**ports, "trigger": self.trigger_metrics_port}

    @property
    def vendor_bare(self) -> Path:
        return self.dirs.vendor / f"{VENDOR_NAME}.git"

    @property
    def vendor_work(self) -> Path:
        return self.dirs.vendor / "work"

    def push(self, files: Mapping[str, str], message: str) -> Pushed:
        """Commit ``files`` in the vendor's working clone and push ``main``: the post-receive
        hook sends the push to the trigger (a push never fails because of the hook)."""
        commit = commit_files(self.vendor_work, dict(files), message)
        done = subprocess.run(
            ["git", "-C", str(self.vendor_work), "push", "-q", str(self.vendor_bare), "main"],
            env=self._push_env,
            capture_output=True,
            text=True,
            check=True,
        )
        return Pushed(commit, done.stderr.strip())

    def drain(self) -> list[Event]:
        """Read what the watch queue holds now; keep it in :attr:`seen`."""
        new: list[Event] = []
        prefix = f"{self.settings.topic_prefix}."
        with closing(pika.BlockingConnection(pika.URLParameters(self.broker.admin_url))) as conn:
            ch = conn.channel()
            while True:
                method, _props, body = ch.basic_get(self.events_queue, auto_ack=True)
                if method is None:
                    break
                topic = method.routing_key.removeprefix(prefix)
                new.append(Event(topic, json.loads(body), time.time()))
        self.seen += new
        return new

    def wait_event(
        self,
        topics: tuple[str, ...],
        timeout: float,
        match: Callable[[dict[str, Any]], bool] = lambda _b: True,
        *,
        after: int = 0,
    ) -> Event:
        """The first event of ``topics`` (prefix matches: ``image.published`` matches every
        stream) seen at index ``after`` or later that ``match`` accepts."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.seen[after:]:
                if event.topic.startswith(topics) and match(event.body):
                    return event
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {' or '.join(topics)} within {timeout:.0f}s")
            if not self.drain():
                time.sleep(0.5)

    def stop_services(self, *names: str) -> None:
        for name in names or tuple(self.services):
            run = self.services.pop(name)
            run.consumer.stop()
            run.thread.join(60)


def _service_wiring(
    broker: BrokerAccess, dirs: Dirs, base_url: str, trust: Path
) -> list[tuple[BusSettings, Callable[[BusSettings], Consumer]]]:
    store = str(dirs.store)
    builder = BusSettings(
        service="builder",
        amqp_url=broker.url_for("builder"),
        consumer_config={
            "store_dir": store,
            "work_dir": str(dirs.root / "work"),
            "cache_dir": str(CACHE / "apt" / "bookworm-amd64"),
            "root_cache_dir": str(CACHE / "roots"),
            "build_user": BUILD_USER,  # unshare mode: scripts run as root of its namespace
            "git_schemes": ["file"],  # the vendor repository is on this machine
        },
    )

    def for_service(service: str, config: dict[str, Any]) -> BusSettings:
        update = {"service": service, "amqp_url": broker.url_for(service)}
        return builder.model_copy(update={**update, "consumer_config": config})

    tester = for_service(
        "tester",
        {
            "store_dir": store,
            "work_dir": str(dirs.root / "tester-work"),
            "plan_file": str(REPO / "examples" / "test-plan.toml"),
        },
    )
    publisher = for_service(
        "publisher",
        {
            "repo_dir": str(dirs.repo),
            "store_dir": store,
            "keys_dir": str(trust / "keys"),
            "work_dir": str(dirs.root / "publisher-work"),
            "base_url": base_url,
        },
    )
    ledger = for_service("ledger", {"db_path": str(dirs.ledger)})
    return [
        (builder, build_builder),
        (tester, build_tester),
        (publisher, build_publisher),
        (ledger, build_ledger),
    ]


def _start_services(
    admin_url: str, wiring: list[tuple[BusSettings, Callable[[BusSettings], Consumer]]]
) -> dict[str, Running]:
    """Each service in a thread, its queue declared before anything is sent. The shared
    topology is declared once, as the administrator does (a given broker may lack it)."""
    running: dict[str, Running] = {}
    with closing(pika.BlockingConnection(pika.URLParameters(admin_url))) as conn:
        ch = conn.channel()
        topology.declare(ch, topology.shared_topology(wiring[0][0]))
        for settings, _build in wiring:
            topics = ROLE_BY_USER[settings.service].consumes
            topology.declare(ch, topology.service_topology(settings, topics))
    for settings, build in wiring:
        svc = build(settings)
        thread = threading.Thread(target=svc.run, name=settings.service, daemon=True)
        thread.start()
        running[settings.service] = Running(svc, thread, svc.metrics.serve(0))
    for run in running.values():
        run.consumer.ready.wait(30)
    return running


def _watch_queue(admin_url: str, settings: BusSettings) -> str:
    """A queue that gets every event of the run, in the order the broker routed them. Named,
    not exclusive: each look at it uses a fresh connection (a VM may run for minutes)."""
    name = f"imgline.system.events-{uuid.uuid4().hex[:8]}"
    with closing(pika.BlockingConnection(pika.URLParameters(admin_url))) as conn:
        ch = conn.channel()
        ch.queue_declare(name, arguments={"x-expires": 3_600_000})
        ch.queue_bind(name, settings.exchange, f"{settings.topic_prefix}.#")
    return name


def _vendor(dirs: Dirs) -> None:
    """A bare repository with the post-receive hook, and an empty working clone's directory."""
    shutil.rmtree(dirs.vendor, ignore_errors=True)
    bare = dirs.vendor / f"{VENDOR_NAME}.git"
    bare.parent.mkdir(parents=True)
    git(dirs.vendor, "init", "-q", "--bare", "-b", "main", str(bare))
    hook = bare / "hooks" / "post-receive"
    shutil.copy(REPO / "deploy" / "git" / "post-receive", hook)
    hook.chmod(0o755)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log_file: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"imgline-trigger exited {proc.returncode}: see {log_file}")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"imgline-trigger did not answer {url} within 60s: see {log_file}")


@contextmanager
def _trigger(
    broker: BrokerAccess, dirs: Dirs, settings: BusSettings
) -> Iterator[tuple[str, int, dict[str, str]]]:
    """``imgline-trigger`` as its own process: (webhook URL, metrics port, the env a push
    needs for the hook)."""
    secret = dirs.root / "trigger-gitea.secret"
    secret.write_text(secrets.token_urlsafe(24) + "\n")
    secret.chmod(0o600)
    rules = dirs.root / "trigger-rules.toml"
    rules.write_text(
        "[[rule]]\n"
        f'repository = "{VENDOR_NAME}"\n'
        f'url = "file://{dirs.vendor / f"{VENDOR_NAME}.git"}"\n'
        'branches = ["main"]\n'
        'paths = ["kickstarts/**"]\n'
        'name = "node"\n'
        'stream = "stable"\n'
        f'kickstart_path = "{KICKSTART}"\n'
    )
    port, metrics_port = free_port(), free_port()
    config = dirs.root / "trigger.toml"
    config.write_text(
        'service = "trigger"\n'
        f"amqp_url = {json.dumps(broker.url_for('trigger'))}\n"
        f'exchange = "{settings.exchange}"\n'
        f'dead_letter_exchange = "{settings.dead_letter_exchange}"\n'
        f'dead_letter_queue = "{settings.dead_letter_queue}"\n'
        f"metrics_port = {metrics_port}\n"
        "[consumer_config]\n"
        f"listen_port = {port}\n"
        f'rules_file = "{rules}"\n'
        f'secret_files = {{ gitea = "{secret}" }}\n'
    )
    bindir = Path(sys.executable).parent
    log_file = dirs.logs / "trigger.log"
    with log_file.open("ab") as out:
        proc = subprocess.Popen(
            [str(bindir / "imgline-trigger"), "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/healthz", proc, log_file)
        hooks_url = f"http://127.0.0.1:{port}/hooks"
        env = {
            **os.environ,
            "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            "IMGLINE_TRIGGER_URL": hooks_url,
            "IMGLINE_TRIGGER_SECRET": str(secret),
        }
        yield hooks_url, metrics_port, env
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def running_system(broker: BrokerAccess, root: Path) -> Iterator[System]:
    """Start everything but the host under ``root`` (its previous run's files replaced; the
    artefact store is kept, so versions keep counting up); stop it all on the way out."""
    dirs = Dirs(root)
    for old in ("work", "tester-work", "publisher-work", "logs"):
        shutil.rmtree(root / old, ignore_errors=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{dirs.ledger}{suffix}").unlink(missing_ok=True)
    dirs.logs.mkdir(parents=True)
    BuildUser.lookup(BUILD_USER).reach(root)  # the build user's namespace works under root
    trust = trust_dir()
    root_json = fresh_repository(dirs.repo)
    _vendor(dirs)
    with ExitStack() as stack:
        server = stack.enter_context(http.running(dirs.repo, "127.0.0.1", 0))
        base_url = server.url.rstrip("/")
        wiring = _service_wiring(broker, dirs, base_url, trust)
        settings = wiring[0][0]
        services = _start_services(broker.admin_url, wiring)
        system = System(broker, dirs, settings, base_url, root_json, "", 0, services)
        stack.callback(system.stop_services)
        system.events_queue = _watch_queue(broker.admin_url, settings)
        hooks_url, metrics_port, env = stack.enter_context(_trigger(broker, dirs, settings))
        system.hooks_url, system.trigger_metrics_port = hooks_url, metrics_port
        system._push_env = env
        yield system


# --- the test host ---------------------------------------------------------------------------


def host_base() -> tuple[HostRelease, Path]:
    """The release a new test host is installed with, and the node image a helper guest boots:
    the node image labelled ``<day>.0``, older than any automatic version from its day on."""
    built, _store = node_image()
    liveimg = Path(urlparse(built.artifact.uri).path)
    day = built.version.split(".")[0]
    return derive(liveimg, built.artifact.sha256, Recipe(version=f"{day}.0")), liveimg


@dataclass(frozen=True)
class TestHost:
    """An installed host disk for one run, and how to boot it."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    disk: Path
    release: HostRelease  # what it was installed with
    console: Path
    services: Services

    def boot(self) -> Watcher:
        return start_disk(
            self.disk, firmware="bios", net=self.services.net(), console_log=self.console
        )


def installed_host(
    system: System,
    admin_edits: Mapping[str, str],
    *,
    settle_seconds: int = 20,
    progress: Callable[[str], None] = log.info,
) -> TestHost:
    """A disk with ``imgline-updater install`` of :func:`host_base` (GRUB, LVM thin layers),
    the repository's root pinned, the agent on the bus as user ``updater``, and the admin's
    ``admin_edits`` (path under /etc → text) in its /etc. Installed once per content; each
    run gets a copy."""
    base, liveimg = host_base()
    config = config_toml(
        amqp_url=system.broker.url_for("updater"),
        exchange=system.exchange,
        settle_seconds=settle_seconds,
    )
    key_doc = [
        INSTALL_RECIPE,
        base.sha256,
        hashlib.sha256(system.root).hexdigest(),
        config,
        sorted(admin_edits.items()),
        python_bundle_dir().parent.name,  # the agent's code, keyed by its sources
    ]
    key = hashlib.sha256(json.dumps(key_doc).encode()).hexdigest()[:16]
    hosts = SYSTEM_CACHE / "hosts"
    entry = hosts / key
    if not (entry / "disk.img").is_file():
        progress(f"installing a test host with {base.name}-{base.version} (cached afterwards)")
        started = time.monotonic()
        hosts.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".host-", dir=hosts))
        try:
            (tmp / "root.json").write_bytes(system.root)
            (tmp / "updater.toml").write_text(config)
            disk = blank_disk(tmp / "disk.img", 6144)
            files = {
                "image.img": base.image,
                "root.json": tmp / "root.json",
                "updater.toml": tmp / "updater.toml",
            }
            script = install_script(base, "grub", admin_edits)
            helper(liveimg, script, disk, files, workdir=tmp / "install")
            shutil.rmtree(tmp / "install", ignore_errors=True)
            for stale in hosts.iterdir():
                if stale.name != tmp.name:
                    shutil.rmtree(stale, ignore_errors=True)
            tmp.rename(entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        progress(f"installed in {time.monotonic() - started:.0f}s: {entry / 'disk.img'}")
    where = system.dirs.host
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    disk = sparse_copy(entry / "disk.img", where / "disk.img")
    amqp_port = urlparse(system.broker.url_for("updater")).port or 5672
    repo_port = urlparse(system.base_url).port or 80
    return TestHost(disk, base, where / "console.log", Services(repo_port, amqp_port))


def expect(vm: Watcher, marker: str, timeout: float, console: Path) -> float:
    """Seconds into the guest's life when ``marker`` showed on its console (after the previous
    match); an error naming the console log when it did not within ``timeout``."""
    seen = vm.wait_for(marker, timeout)
    if seen is None:
        tail = vm.console[-3000:]
        raise TimeoutError(f"the test host did not get to {marker!r}: see {console}\n{tail}")
    return seen.seconds


#: what the admin of the test host had written before the image shipped the file itself (the
#: second push of examples/payload-config.ks): kept by the /etc merge, unreadable to the payload
ADMIN_EDITS = {"node-payload.conf": "# from our runbook: the payload's port\nport: 8080\n"}


def node_kickstart() -> str:
    return (REPO / "examples" / "node.ks").read_text(encoding="utf-8")


def first_push_files() -> dict[str, str]:
    """The vendor repository's first push: the node image's kickstart."""
    return {KICKSTART: node_kickstart()}


def payload_config_push_files() -> dict[str, str]:
    """A second push: the payload reads /etc/node-payload.conf (examples/payload-config.ks),
    included from the main kickstart."""
    fragment = (REPO / "examples" / "payload-config.ks").read_text(encoding="utf-8")
    return {
        "kickstarts/payload-config.ks": fragment,
        KICKSTART: node_kickstart() + "\n%include payload-config.ks\n",
    }
