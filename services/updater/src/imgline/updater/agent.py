"""The agent on each host: hear of a release, check the signed repository, apply, report.

A message on the bus is only a hint that something may have changed: whatever its body says,
the agent acts on what the TUF repository signs for its stream, so a forged or replayed message
can make it look, never make it install. A pull timer does the same check for hosts that
missed a message (asleep, offline, bus down). Checks run one at a time, and hints that arrive
during one collapse into a single check after it. Reports go through the on-disk outbox, so a
bus that is away loses nothing; ``host.upgraded`` comes from the health check after the reboot,
not from here.
"""

from __future__ import annotations

import hashlib
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Protocol

from prometheus_client import CollectorRegistry

from imgline.core.bus import Consumer, Publisher, topology
from imgline.core.bus.metrics import serve_configured
from imgline.core.config import BusSettings
from imgline.core.errors import ConfigError, ImglineError, TransientError
from imgline.core.trust.client import RepositoryClient
from imgline.core.trust.errors import TrustError
from imgline.core.trust.layout import Manifest
from imgline.core.trust.rollout import Rollout
from imgline.schemas import payloads as p
from imgline.schemas.messages import ImagePublishedV1
from imgline.schemas.payloads import utcnow
from imgline.updater import hostlock
from imgline.updater.domain.policy import Candidate, HostView, Verdict, choose, decide
from imgline.updater.errors import UpdaterError
from imgline.updater.metrics import HostMetrics
from imgline.updater.outbox import Outbox
from imgline.updater.settings import HostConfig

log = logging.getLogger(__name__)

SERVICE = "updater"
#: How soon a flush is tried again while reports wait for the bus (the check timer is hourly).
FLUSH_RETRY_SECONDS = 30.0


class Host(Protocol):
    """The machine the agent updates; the real one is LVM and a boot loader, tests fake it."""

    def view(self, now: datetime) -> HostView: ...

    def apply(self, image: Path, manifest: Manifest) -> str:
        """Stage ``image`` as a new layer that boots next; return the layer's name. Raises
        ``UpdaterError(message, step)``; the host still boots its previous layer then."""
        ...

    def reboot(self) -> None: ...


def outbox_of(config: HostConfig) -> Outbox:
    """The outbox the agent and the boot-time health check share."""
    return Outbox(config.state_dir / "outbox")


class Agent:
    """One host's check: read the repository, let the policy decide, download, apply, report."""

    def __init__(
        self,
        config: HostConfig,
        host_id: str,
        client: RepositoryClient,
        host: Host,
        outbox: Outbox,
        *,
        clock: Callable[[], datetime] = utcnow,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self.host_id = host_id
        self.client = client
        self.host = host
        self.outbox = outbox
        self.clock = clock
        self.metrics = HostMetrics(
            registry or CollectorRegistry(), lambda: len(self.outbox.pending())
        )
        self.downloads = config.state_dir / "downloads"
        self._lock = threading.Lock()

    def check(self, reason: str, *, manual: bool = False) -> Verdict:
        """Look at the newest signed release of the stream and act on the policy's verdict.

        Returns the verdict; a failed download or apply does not raise but is reported
        (``host.upgrade.failed`` in the outbox), and an unreadable repository is logged and
        left to the next trigger. One check runs at a time.
        """
        with self._lock:
            return self._check(reason, manual)

    def _check(self, reason: str, manual: bool) -> Verdict:
        try:
            manifest, staged = self._newest(manual=manual)
        except TrustError as exc:
            log.warning(
                "check (%s): cannot read the signed repository at %s: %s; trying again at the "
                "next message or timer",
                reason,
                self.config.repository_url,
                exc,
            )
            return Verdict(action="skip", reason=f"repository not readable: {exc}", reboot=False)
        with ExitStack() as held:
            try:
                held.enter_context(hostlock.changing(self.config))
            except TransientError as exc:
                log.warning(
                    "check (%s): the host is busy: %s; the next trigger tries again", reason, exc
                )
                return Verdict(action="skip", reason=f"host busy: {exc}", reboot=False)
            return self._decide_and_act(manifest, staged, reason, manual)

    def _decide_and_act(
        self, manifest: Manifest | None, staged: Rollout | None, reason: str, manual: bool
    ) -> Verdict:
        """Under the host's lock: what the host runs now decides what to do with ``manifest``."""
        view = self.host.view(self.clock())
        candidate = (
            None
            if manifest is None
            else Candidate(
                name=manifest.name,
                version=manifest.version,
                build_id=manifest.build_id,
                rollout=staged,
            )
        )
        verdict = decide(self.config, self.host_id, candidate, view, manual=manual)
        log.info("check (%s): %s: %s", reason, verdict.action, verdict.reason)
        self.metrics.checked(
            verdict.action,
            host_id=self.host_id,
            name=self.config.name,
            stream=self.config.stream,
            running=view.running_version,
            at=view.now.timestamp(),
        )
        if verdict.action == "skip" or manifest is None:
            return verdict
        started = time.monotonic()
        try:
            self._act(verdict, manifest)
        except UpdaterError as exc:
            self._report_failure(manifest, view, exc, time.monotonic() - started)
        except Exception as exc:  # a bug in the host adapter: still worth a report
            log.exception("applying %s crashed", manifest.version)
            crash = UpdaterError(f"{type(exc).__name__}: {exc}", "apply")
            self._report_failure(manifest, view, crash, time.monotonic() - started)
        return verdict

    def _newest(self, *, manual: bool) -> tuple[Manifest | None, Rollout | None]:
        """The newest signed release of this host's image on its stream that is not paused
        (``policy.choose``; by hand, the newest one), and its signed rollout, after a
        refresh."""
        self.client.refresh()
        stream = self.config.stream
        try:
            index = self.client.releases(stream)
        except TrustError as exc:
            if exc.reason != "not_found":
                raise
            log.info("nothing to take: %s", exc)
            return None, None
        table = self.client.rollouts(stream)
        release = choose(index, table, self.config.name, manual=manual)
        if release is None:
            return None, None
        return self.client.manifest(stream, release), table.of(release.name, release.version)

    def _act(self, verdict: Verdict, manifest: Manifest) -> None:
        image = self._download(manifest)
        if verdict.action != "apply":
            log.info(
                "%s downloaded to %s; not applied (%s)", manifest.version, image, verdict.reason
            )
            return
        layer = self.host.apply(image, manifest)
        log.info("%s applied as %s", manifest.version, layer)
        image.unlink(missing_ok=True)
        if verdict.reboot:
            self.host.reboot()

    def _download(self, manifest: Manifest) -> Path:
        """The image, verified against the signed target, in ``<state_dir>/downloads/``.

        An interrupted download resumes from its ``.part`` file; an image downloaded by an
        earlier check (policy ``download-only``) is reused once its hash checks out. Images of
        other releases are removed first: the disk only ever holds one being fetched.
        """
        dest = self.downloads / PurePosixPath(manifest.image).name
        self._remove_others(dest)
        try:
            if dest.exists() and self._intact(dest, manifest.image):
                return dest
            return self.client.download(manifest.image, dest)
        except TrustError as exc:
            log.error("download of %s failed (%s): %s", manifest.image, exc.reason, exc)
            raise UpdaterError(
                f"could not download {manifest.image} ({exc.reason}): {exc}; the next check "
                "resumes it",
                "download",
            ) from exc
        except OSError as exc:
            raise UpdaterError(
                f"could not write the download to {self.downloads}: {exc}; check its file "
                "system (space, permissions)",
                "download",
            ) from exc

    def _intact(self, path: Path, target: str) -> bool:
        info = self.client.target(target)
        if path.stat().st_size != info.length:
            return False
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest() == info.hashes.get("sha256")

    def _remove_others(self, keep: Path) -> None:
        if not self.downloads.is_dir():
            return
        wanted = {keep.name, keep.name + ".part"}
        for path in self.downloads.iterdir():
            if path.is_file() and path.name not in wanted:
                log.info("removing %s: not the release being fetched", path)
                path.unlink(missing_ok=True)

    def _report_failure(
        self, manifest: Manifest, view: HostView, exc: UpdaterError, seconds: float
    ) -> None:
        step = exc.step or "apply"
        log.error("%s not applied: failed at %s: %s", manifest.version, step, exc)
        self.metrics.failures.labels(step).inc()
        self.outbox.put(
            p.HostUpgradeFailed(
                host_id=self.host_id,
                name=manifest.name,
                stream=manifest.stream,
                from_version=view.running_version,
                to_version=manifest.version,
                duration_seconds=round(max(seconds, 0.0), 3),
                step=step,
                error=str(exc) or type(exc).__name__,
            )
        )


class Triggers:
    """When the agent checks and flushes: at start, on a hint, and on the pull timer.

    One thread runs everything, so checks never overlap. Hints during a check collapse into one
    more check after it (a burst of messages costs one refresh, and none is missed). The timer
    counts from the end of the last check. The outbox is flushed at start and after each
    check, and again every ``flush_retry`` seconds while reports are left. A failing check or
    flush is logged and never stops the loop.
    """

    def __init__(
        self,
        check: Callable[[str], object],
        flush: Callable[[], bool],
        interval: float,
        *,
        flush_retry: float = FLUSH_RETRY_SECONDS,
        first: str | None = "start",
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self._flush = flush  # True when nothing is left to send
        self.interval = interval
        self.flush_retry = flush_retry
        self._monotonic = monotonic
        self._cond = threading.Condition()
        self._pending: str | None = first
        self._stopped = False

    def hint(self, reason: str = "message") -> None:
        """Ask for a check soon; returns at once (safe from any thread)."""
        with self._cond:
            if self._pending is None:
                self._pending = reason
            self._cond.notify()

    def stop(self) -> None:
        """End ``run`` after the check in hand, if any."""
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def run(self) -> None:
        all_sent = self._safely("flush", self._flush) is True
        next_check = self._monotonic() + self.interval
        next_flush = math.inf if all_sent else self._monotonic() + self.flush_retry
        while True:
            with self._cond:
                while True:
                    if self._stopped:
                        return
                    now = self._monotonic()
                    reason = self._pending
                    if reason is None and now >= next_check:
                        reason = "timer"
                    if reason is not None or now >= next_flush:
                        self._pending = None
                        break
                    self._cond.wait(min(next_check, next_flush) - now)
            if reason is not None:
                self._safely(f"check ({reason})", self._check, reason)
                next_check = self._monotonic() + self.interval
            all_sent = self._safely("flush", self._flush) is True
            next_flush = math.inf if all_sent else self._monotonic() + self.flush_retry

    @staticmethod
    def _safely(what: str, fn: Callable[..., object], *args: object) -> object:
        try:
            return fn(*args)
        except Exception:
            log.exception("%s failed; the next trigger tries again", what)
            return None


def agent_settings(bus: BusSettings, host_id: str) -> BusSettings:
    """The bus settings of one host's agent: service ``updater`` and the queue
    ``<exchange>.updater.<host_id>``, one per host, so every host hears every hint (a shared
    queue would hand each message to one host only)."""
    queue = f"{bus.exchange}.{SERVICE}.{host_id}"
    if bus.queue is not None and bus.queue != queue:
        raise ConfigError(
            f"queue = {bus.queue!r} would be shared by hosts: leave 'queue' out of the updater's "
            f"config; each host consumes from its own <exchange>.updater.<host_id> ({queue})"
        )
    return BusSettings.model_validate({**bus.model_dump(), "service": SERVICE, "queue": queue})


def agent_topology(bus: BusSettings, config: HostConfig, host_id: str) -> topology.Topology:
    """This host's durable quorum queue, bound to the releases of its own stream only."""
    settings = agent_settings(bus, host_id)
    return topology.service_topology(settings, (ImagePublishedV1.binding(config.stream),))


def make_agent(
    config: HostConfig,
    host: Host,
    host_id: str,
    client: RepositoryClient | None,
    clock: Callable[[], datetime],
    *,
    registry: CollectorRegistry | None = None,
) -> Agent:
    """The agent with the host's pinned-root TUF client (unless a test brings its own)."""
    if client is None:
        client = RepositoryClient.for_base_url(config.repository_url, config.tuf_dir)
    return Agent(config, host_id, client, host, outbox_of(config), clock=clock, registry=registry)


class AgentService:
    """The agent wired to the bus: a consumer for hints, a publisher for the outbox, and the
    trigger loop on a thread of its own. ``run`` blocks until ``stop`` (or SIGTERM via
    ``consumer.install_signal_handlers``). A broker that is away only delays hints and
    reports: the timer keeps checking the repository meanwhile."""

    def __init__(
        self,
        bus: BusSettings,
        config: HostConfig,
        host: Host,
        *,
        host_id: str,
        client: RepositoryClient | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if not bus.amqp_url:
            raise ConfigError("the updater agent needs a broker: set amqp_url or IMGLINE_AMQP_URL")
        self.settings = agent_settings(bus, host_id)
        self.config = config
        self.consumer = Consumer(self.settings, bus.amqp_url)
        self.agent = make_agent(
            config, host, host_id, client, clock, registry=self.consumer.metrics.registry
        )
        self.outbox = self.agent.outbox
        self.consumer.on(
            ImagePublishedV1, self.on_published, topic=ImagePublishedV1.binding(config.stream)
        )
        # one attempt and a retry: the outbox itself is the retry loop when the bus is away
        self.publisher = Publisher(self.settings, bus.amqp_url, self.consumer.metrics, attempts=2)
        self.triggers = Triggers(self.agent.check, self.flush, config.refresh_interval_seconds)

    def on_published(self, msg: ImagePublishedV1) -> None:
        """A hint: check the repository. The body is not used for anything but the log."""
        log.info("hint: %s; checking the signed repository", msg.summary)
        self.triggers.hint("message")

    def flush(self) -> bool:
        """Send what the outbox holds; True when nothing is left."""
        self.outbox.flush(self.publisher.publish, self.settings.topic_prefix)
        return not self.outbox.pending()

    def run(self) -> None:
        worker = threading.Thread(target=self.triggers.run, name="imgline-agent", daemon=True)
        worker.start()
        try:
            self.consumer.run()
        finally:
            self.triggers.stop()
            worker.join(self.settings.shutdown_grace_seconds)
            if worker.is_alive():
                log.warning(
                    "a check is still running after %.0fs; stopping anyway (an interrupted "
                    "apply is resumed or undone by its journal)",
                    self.settings.shutdown_grace_seconds,
                )
            self.publisher.close()

    def stop(self) -> None:
        self.consumer.stop()


class PullAgent:
    """The agent of a host with no broker: the pull timer is its only trigger. Reports wait in
    the outbox (``imgline-updater status`` shows the last result) until a broker is set."""

    def __init__(
        self,
        config: HostConfig,
        host: Host,
        *,
        host_id: str,
        client: RepositoryClient | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.agent = make_agent(config, host, host_id, client, clock)
        self.triggers = Triggers(self.agent.check, self._keep, config.refresh_interval_seconds)

    def _keep(self) -> bool:
        """Nothing can be sent: the reports stay, and the loop must not retry sending them."""
        return True

    def run(self) -> None:
        """Check now and then every ``refresh_interval_seconds`` until SIGTERM or ``stop``."""
        previous = signal.signal(signal.SIGTERM, lambda *_: self.triggers.stop())
        try:
            self.triggers.run()
        finally:
            signal.signal(signal.SIGTERM, previous)

    def stop(self) -> None:
        self.triggers.stop()


def run(bus: BusSettings, config: HostConfig, host: Host) -> int:
    """``imgline-updater run``: 0 after SIGTERM, 2 when the configuration cannot work, 1 when
    the broker refuses the host's queue. Without ``amqp_url`` the agent pulls on its timer."""
    # The same host id as the health check's reports; imported here, not at the top, so the
    # agent itself never needs the real host's LVM and boot-loader stack (tests fake it).
    from imgline.updater.host import machine_id  # noqa: PLC0415

    try:
        host_id = machine_id(config)
        if not bus.amqp_url:
            pull = PullAgent(config, host, host_id=host_id)
            serve_configured(pull.agent.metrics.registry, bus)
            return _run_pull_only(pull, config)
        service = AgentService(bus, config, host, host_id=host_id)
    except ImglineError as exc:
        print(f"imgline-updater: {exc}", file=sys.stderr)
        return 2
    serve_configured(service.consumer.metrics.registry, bus)
    log.info(
        "agent for host %s: %s on stream %s from %s, policy %s, queue %s",
        service.agent.host_id,
        config.name,
        config.stream,
        config.repository_url,
        config.policy,
        service.settings.queue_name,
    )
    service.consumer.install_signal_handlers()
    try:
        service.run()
    except ImglineError as exc:  # e.g. the broker refused the queue's arguments
        print(f"imgline-updater: {exc}", file=sys.stderr)
        return 1
    return 0


def _run_pull_only(pull: PullAgent, config: HostConfig) -> int:
    log.warning(
        "agent for host %s: no broker configured (amqp_url), so no hints and no reports on the "
        "bus: checking %s every %.0fs; reports wait in %s",
        pull.agent.host_id,
        config.repository_url,
        config.refresh_interval_seconds,
        pull.agent.outbox.dir,
    )
    pull.run()
    return 0
