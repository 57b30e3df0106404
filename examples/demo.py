"""``make demo``: the whole system on one machine, from a git push to an upgraded host.

Everything runs on embedded defaults (tests/stack.py wires it): a private RabbitMQ node; the
builder, tester, publisher and ledger (each serving its metrics); the trigger as its own
process; a private Prometheus with deploy/prometheus's alert rules; the TUF repository served
on loopback; a vendor repository (a bare git repository with deploy/git/post-receive); and a
test host VM installed by ``imgline-updater install`` with the release before.

1. a push of kickstarts/node.ks: the post-receive hook posts it to the trigger, which asks for
   a build; ``imgline status --follow`` shows each stage live: built (mmdebstrap, liveimg),
   tested (content, a live boot in qemu), published (signed into the repository). The test
   host's agent hears of it, verifies it through TUF, applies it as a new LVM thin layer,
   reboots into it, passes its health check and reports host.upgraded
2. a push that makes the payload read /etc/node-payload.conf (examples/payload-config.ks): it
   passes every test, but the host's admin had a file of their own there; on the host the
   payload fails, the health check fails, the host goes back to its previous layer by itself
   and reports host.rolled_back
3. a push with a typo in the kickstart: build.failed naming the line
4. a message that breaks the contract: the dead-letter queue, with the reason; the trigger's
   user trying to announce a tested image: refused by the broker
5. ``imgline status`` and Prometheus: the builds and the fleet; then where everything is
Needs root: the builder runs its builds as the unprivileged user imgline-build (made by
``make deps``). The first run builds and installs what later runs reuse from .cache/ (package
downloads, package roots, the test host's disk); the guests run under TCG.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pika

from imgline.core import cli as imgline_cli
from imgline.core import logs
from imgline.core.broker import BrokerAccess, broker_access
from imgline.core.bus import Publisher
from imgline.core.bus.consumer import REASON_HEADER
from imgline.core.config import BusSettings
from imgline.core.errors import AccessRefusedError, ImglineError
from imgline.core.prometheus import PrivatePrometheus
from imgline.core.userns import BuildUser
from imgline.schemas.messages import BuildRequestedV1

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
import stack  # noqa: E402 - the whole system's wiring, shared with the end-to-end test

CACHE = REPO / ".cache"
DEMO = CACHE / "demo"
BUILD_USER = "imgline-build"
log = logging.getLogger("imgline.demo")


def show_forgery_refused(broker: BrokerAccess, settings: BusSettings) -> None:
    """The trigger's user announcing a tested image: the broker's topic permissions refuse it,
    so whoever holds that password still cannot get an image signed."""
    forged = settings.routing_key("image.tested")
    try:
        with Publisher(settings, broker.url_for("trigger"), attempts=1) as pub:
            pub.publish_raw(settings.exchange, forged, b"{}", pika.BasicProperties())
    except AccessRefusedError as exc:
        log.info("   the trigger's user sent %s: refused by the broker (%s)", forged, exc)
        return
    log.warning(
        "   %s from the trigger's user was accepted: this broker's users are not "
        "imgline's (IMGLINE_AMQP_URL), so it does not check who publishes what",
        forged,
    )


def show_dead_letter(ch: Any, queue: str) -> None:
    deadline = time.monotonic() + 30
    reason = None
    while reason is None and time.monotonic() < deadline:
        method, props, _ = ch.basic_get(queue, auto_ack=True)
        if method is not None and props is not None:
            reason = (props.headers or {}).get(REASON_HEADER)
        else:
            ch.connection.sleep(0.5)
    log.info("   dead-lettered to %s: %s", queue, reason)


def start_prometheus(ports: dict[str, int]) -> PrivatePrometheus:
    """A private Prometheus scraping the demo's services every 2 s, with deploy's alert rules."""
    where = CACHE / "demo" / "prometheus"
    shutil.rmtree(where, ignore_errors=True)
    config = {
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
        "rule_files": [str(REPO / "deploy" / "prometheus" / "rules" / "imgline.yml")],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for job, port in ports.items()
        ],
    }
    prom = PrivatePrometheus(config, where).start()
    for job, port in ports.items():
        log.info("   %-9s metrics: http://127.0.0.1:%d/metrics", job, port)
    log.info(
        "   Prometheus (deploy/prometheus/rules loaded): %s/graph, alerts at %s/alerts; the "
        "Grafana dashboard to import is deploy/grafana/dashboards/imgline.json",
        prom.url,
        prom.url,
    )
    return prom


def run_cli(argv: list[str]) -> int:
    """``imgline ARGV`` in this process; it sets up logging for itself, the demo's is put back
    after it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return imgline_cli.main(argv)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def push_and_follow(system: stack.System, step: str, files: dict[str, str], message: str) -> int:
    """``git push`` to the vendor repository while ``imgline status --follow`` (what an operator
    types) waits for the request the push makes and shows each stage as it happens."""
    argv = ["status", "--follow", "--ledger", str(system.dirs.ledger), "--timeout", "3600"]
    log.info("%s $ git push (%s), and in another terminal: $ imgline %s", step, message,
             " ".join(argv))  # fmt: skip

    def push() -> None:
        time.sleep(1)  # the CLI is waiting by then
        pushed = stack.Pushed("", "")
        try:
            pushed = system.push(files, message)
        finally:
            for line in pushed.hook_output.splitlines():
                log.info("   git: %s", line)

    pusher = threading.Thread(target=push, name="git-push", daemon=True)
    pusher.start()
    sys.stdout.flush()
    code = run_cli(argv)
    sys.stdout.flush()
    pusher.join(60)
    return code


def release_of(system: stack.System, commit_index: int) -> dict[str, Any]:
    """The image.published event of the build of the latest push."""
    built = system.wait_event(("image.built",), 60, after=commit_index)
    published = system.wait_event(
        ("image.published",), 60, lambda b: b["build_id"] == built.body["build_id"]
    )
    body = published.body
    log.info(
        "   %s-%s from commit %s: signed in %s (%s v%s, snapshot v%s, timestamp v%s)",
        body["name"], body["version"], str(built.body["source_commit"])[:12], body["stream"],
        body["role"], body["role_version"], body["snapshot_version"], body["timestamp_version"],
    )  # fmt: skip
    return body


def host_upgrades(system: stack.System, vm: Any, host: stack.TestHost, old: str, new: str) -> None:
    started = time.monotonic()
    for what, marker in (
        (f"booted {new}", f"IMGLINE-PAYLOAD-READY {new}"),
        ("health check passed", f"IMGLINE-HEALTH host.upgraded {new}"),
    ):
        stack.expect(vm, marker, 900, host.console)
        log.info("   host: %s (%.0fs after the release)", what, time.monotonic() - started)
    report = system.wait_event(("host.upgraded",), 300, lambda b: b["to_version"] == new).body
    log.info(
        "   host.upgraded: host %s %s -> %s, layer %s", report["host_id"], report["from_version"],
        report["to_version"], report["layer"],
    )  # fmt: skip
    if report["from_version"] != old:
        raise ImglineError(f"the host upgraded from {report['from_version']}, not from {old}")


def host_rolls_back(
    system: stack.System, vm: Any, host: stack.TestHost, good: str, bad: str
) -> None:
    started = time.monotonic()
    for what, marker in (
        (f"booted {bad}", f"IMGLINE-HEALTH host.rolled_back {bad}"),
        (f"back on {good}", f"IMGLINE-PAYLOAD-READY {good}"),
    ):
        stack.expect(vm, marker, 900, host.console)
        log.info("   host: %s (%.0fs after the release)", what, time.monotonic() - started)
    report = system.wait_event(("host.rolled_back",), 300, lambda b: b["to_version"] == bad).body
    log.info(
        "   host.rolled_back: host %s stays on %s, refused %s at step %s: %s",
        report["host_id"], report["from_version"], report["to_version"], report["step"],
        report["error"][:200],
    )  # fmt: skip


def broken_push(system: stack.System) -> None:
    files = stack.payload_config_push_files()
    files[stack.KICKSTART] = files[stack.KICKSTART].replace("rootpw --lock", "rootpw --lokc")
    index = len(system.seen)
    pushed = system.push(files, "typo")
    log.info(
        "3) git push of a kickstart with a typo (rootpw --lokc): commit %s", pushed.commit[:12]
    )
    failed = system.wait_event(("build.failed",), 300, after=index).body
    log.info(
        "   build.failed: stage=%s kickstart_line=%s: %s", failed["stage"],
        failed["kickstart_line"], failed["error"],
    )  # fmt: skip


def show_contract_breach(system: stack.System) -> None:
    settings = system.settings
    with Publisher(settings, system.broker.url_for("trigger")) as pub:
        body = {"request_id": "not-a-build", "name": "node", "stream": "Not A Stream"}
        wrong = BuildRequestedV1(body=body, topic=settings.routing_key("build.requested"))
        pub.publish_raw(settings.exchange, wrong.topic, wrong._encoded_body, wrong._properties)
    log.info("4) published a build.requested that breaks the contract")
    with pika.BlockingConnection(pika.URLParameters(system.broker.admin_url)) as conn:
        show_dead_letter(conn.channel(), settings.dead_letter_queue)
    show_forgery_refused(system.broker, settings)


def show_trace(system: stack.System, build_id: str, prom: PrivatePrometheus) -> None:
    """The builds and the fleet (``imgline status``), the refused release traced to the host
    that rolled it back, and the fleet as Prometheus sees it through the ledger."""
    db = str(system.dirs.ledger)
    for argv in (["status", "--ledger", db], ["status", build_id[:12], "--ledger", db]):
        log.info("5) $ imgline %s", " ".join(argv))
        sys.stdout.flush()
        run_cli(argv)
        sys.stdout.flush()
    expr = "imgline_fleet_hosts_by_version"
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not found:
        found = prom.query(expr)
        time.sleep(1)
    for series in found:
        m = series["metric"]
        log.info(
            "   Prometheus: %s{name=%s,stream=%s,version=%s} = %s", expr, m.get("name"),
            m.get("stream"), m.get("version"), series["value"][1],
        )  # fmt: skip


def show_where(system: stack.System, prom: PrivatePrometheus, host: stack.TestHost) -> None:
    d = system.dirs
    log.info("where everything is:")
    for what, where in (
        ("artefacts (images, build logs, test reports)", d.store),
        ("signed repository", f"{d.repo} (served at {system.base_url})"),
        ("ledger (imgline status --ledger)", d.ledger),
        ("logs (services, trigger)", d.logs),
        ("test host disk and console", f"{host.disk}, {host.console}"),
        ("vendor repository (bare, with the hook)", system.vendor_bare),
        ("metrics", ", ".join(f"{n} :{port}" for n, port in system.metrics_ports.items())),
        ("Prometheus", f"{prom.url}/graph, alerts at {prom.url}/alerts"),
        ("dashboard", REPO / "deploy" / "grafana" / "dashboards" / "imgline.json"),
    ):
        log.info("   %-44s %s", what, where)


@contextmanager
def services_log_to(path: Path) -> Iterator[None]:
    """The services' own lines go to ``path``; the terminal keeps the demo's story (and any
    warning or error, whoever logs it)."""
    root = logging.getLogger()
    to_file = logging.FileHandler(path)
    to_file.setFormatter(root.handlers[0].formatter)
    story = ("imgline.demo", "imgline.system", "imgline.core.broker")

    def on_terminal(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.startswith(story)

    for handler in root.handlers:
        handler.addFilter(on_terminal)
    root.addHandler(to_file)
    try:
        yield
    finally:
        root.removeHandler(to_file)
        to_file.close()
        for handler in root.handlers:
            handler.removeFilter(on_terminal)


def ready_to_build() -> bool:
    """Root, a build user, and a path to .cache/ it may take (else say what is missing)."""
    if os.geteuid() != 0:
        log.error(
            "run the demo as root: its builder switches to the unprivileged build user "
            "imgline-build for each build (scripts/ensure-build-user.sh makes it)"
        )
        return False
    # the build user's namespace works under .cache/: let it through the directories above
    # the checkout (a checkout under /root or a 0700 home), for its two ids only
    CACHE.mkdir(exist_ok=True)
    BuildUser.lookup(BUILD_USER).reach(CACHE)
    return True


def run() -> int:
    if not ready_to_build():
        return 2
    with (
        broker_access(passwords={"updater": stack.updater_password()}) as broker,
        stack.running_system(broker, DEMO) as system,
        ExitStack() as stack_,
    ):
        stack_.enter_context(services_log_to(system.dirs.logs / "services.log"))
        log.info("0) builder, tester, publisher, ledger and trigger running")
        prom = start_prometheus(system.metrics_ports)
        stack_.callback(prom.stop)
        host = stack.installed_host(system, stack.ADMIN_EDITS, progress=log.info)
        vm = stack_.enter_context(host.boot())
        base = host.release.version
        log.info("   test host booting %s-%s (installed with the release before)", "node", base)

        code = push_and_follow(system, "1)", stack.first_push_files(), "the node image")
        if code != 0:
            log.error("the build did not end published (imgline exited %d)", code)
            return 1
        first = release_of(system, 0)
        stack.expect(vm, f"IMGLINE-PAYLOAD-READY {base}", 900, host.console)
        host_upgrades(system, vm, host, base, first["version"])

        index = len(system.seen)
        files = stack.payload_config_push_files()
        code = push_and_follow(system, "2)", files, "the payload reads /etc/node-payload.conf")
        if code != 0:
            log.error("the second build did not end published (imgline exited %d)", code)
            return 1
        second = release_of(system, index)
        host_rolls_back(system, vm, host, first["version"], second["version"])

        broken_push(system)
        show_contract_breach(system)
        show_trace(system, second["build_id"], prom)
        show_where(system, prom, host)
        log.info(
            "demo done: two pushes built, tested, signed and published; the host upgraded to "
            "the first and rolled back the second by itself; a kickstart typo reported with its "
            "line; a bad message kept aside; the ledger and Prometheus saw it all"
        )
    return 0


def main() -> int:
    logs.configure("INFO")
    # SIGTERM unwinds like Ctrl-C: the private broker and Prometheus are stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return run()
    except (ImglineError, TimeoutError) as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
