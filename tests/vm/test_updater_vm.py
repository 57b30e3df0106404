"""The updater on hosts that boot from their own disk through a real boot loader, with real
lvm2 (vm tier).

v1, v2 and v3 are releases of the node image (tests/hostimages.py): v2 changes vendor files in
/etc, v3's payload fails, so its health check fails. A disk is installed with v1 by
``imgline-updater install`` in a helper guest, then booted like a machine:

- GRUB: an apply of v2 killed with SIGKILL after each of its steps, resumed each time (the old
  default stays the default until the switch); the disk then boots on SeaBIOS, v2 passes its
  health check (``host.upgraded`` on the bus) with the admin's /etc kept; v3 is published,
  the agent applies it, it fails its health check, and the host goes back to v2 by itself
  (``host.rolled_back``); last, the same disk starts through OVMF and GRUB's EFI image.
- systemd-boot on OVMF: the agent on v1 applies v2 from the signed repository, reboots into
  the entry whose file name carries the boot counter, and blesses it.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pika
import pytest
from hostimages import ADMIN_EDITS, HostRelease, host_releases
from hostlab import (
    HOST_ID,
    MOUNT_HOST,
    UPDATER,
    Services,
    config_toml,
    helper,
    inspect,
    install_script,
)
from tufrepo import Site, make_site
from vmguest import Watcher, blank_disk, start_disk

from imgline.core.bus import topology
from imgline.core.bus.publisher import Publisher
from imgline.core.config import BusSettings
from imgline.publisher import http
from imgline.publisher.adapters.repo import published_event
from imgline.schemas import payloads as p
from imgline.schemas.messages import ImagePublishedV1
from imgline.updater.domain.journal import STEPS

pytestmark = pytest.mark.vm

READY = "IMGLINE-PAYLOAD-READY"
BOOT_TIMEOUT = 400
APPLY_TIMEOUT = 900


@pytest.fixture(scope="module")
def releases(node_image: tuple[p.ImageBuilt, object], node_liveimg: Path) -> list[HostRelease]:
    built, _store = node_image
    return host_releases(node_liveimg, built.artifact.sha256, built.version)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """The signed repository the hosts follow (its root is pinned at install)."""
    return make_site(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def exchange() -> str:
    return f"imgline-vm-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class HostBus:
    amqp_url: str
    exchange: str
    config: str


@pytest.fixture(scope="module")
def host_bus(amqp_url: str, exchange: str) -> HostBus:
    """The hosts' bus and updater.toml: this module's exchange, reached as the test's broker
    user (a per-test exchange is outside the updater user's permissions, which the broker tier
    tests on the pipeline's own names)."""
    return HostBus(amqp_url, exchange, config_toml(amqp_url=amqp_url, exchange=exchange))


def _install(
    image: Path, release: HostRelease, site: Site, disk: Path, *, config: str, loader: str
) -> None:
    work = disk.parent / f"{disk.stem}-install"
    work.mkdir(exist_ok=True)
    (work / "updater.toml").write_text(config)
    files = {
        "image.img": release.image,
        "root.json": site.root / "metadata" / "1.root.json",
        "updater.toml": work / "updater.toml",
    }
    edits = {f"imgline-test/{name}": text for name, text in ADMIN_EDITS.items()}
    helper(image, install_script(release, loader, edits), disk, files)


@pytest.fixture(scope="module")
def grub_v1(
    tmp_path_factory: pytest.TempPathFactory,
    node_liveimg: Path,
    releases: list[HostRelease],
    site: Site,
    host_bus: HostBus,
) -> Path:
    """A disk installed with v1 and GRUB, copied by each test that boots it."""
    disk = blank_disk(tmp_path_factory.mktemp("grub") / "golden.img", 6144)
    _install(node_liveimg, releases[0], site, disk, config=host_bus.config, loader="grub")
    return disk


def _copy(disk: Path, dest: Path) -> Path:
    subprocess.run(["cp", "--sparse=always", str(disk), str(dest)], check=True)
    return dest


@dataclass
class Lab:
    """The repository served on loopback, the broker, and a queue that sees host reports."""

    site: Site
    services: Services
    amqp_url: str
    exchange: str
    reports: str

    def publish(self, release: HostRelease) -> None:
        repo = self.site.publisher(base_url="http://10.0.2.100:8090")
        tested = release.tested()
        done = repo.publish(tested, release.image)
        event = published_event(repo, tested.build_id, done)
        bus = BusSettings(service="vm-test", amqp_url=self.amqp_url, exchange=self.exchange)
        with Publisher(bus, self.amqp_url) as pub:
            pub.publish(ImagePublishedV1.from_payload(event, "imgline"))

    def wait_report(self, topic: str, timeout: float) -> dict[str, object]:
        """The next host report on the bus; earlier ones of other topics are skipped."""
        conn = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        try:
            channel = conn.channel()
            for method, _props, body in channel.consume(self.reports, inactivity_timeout=timeout):
                if method is None:
                    break
                channel.basic_ack(method.delivery_tag)
                if method.routing_key == f"imgline.{topic}":
                    doc: dict[str, object] = json.loads(body)
                    return doc
            raise AssertionError(f"no {topic} report within {timeout}s")
        finally:
            conn.close()


@contextmanager
def serving(site: Site, amqp_url: str, exchange: str) -> Iterator[Lab]:
    """``site`` served on loopback, with a queue that collects the host reports, and the
    pipeline's audit queue, as a deployed broker has it (events are published ``mandatory``)."""
    reports = f"{exchange}.reports.{uuid.uuid4().hex[:6]}"
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = conn.channel()
    bus = BusSettings(
        service="vm-test",
        exchange=exchange,
        dead_letter_exchange=f"{exchange}.dlx",
        dead_letter_queue=f"{exchange}.dead-letter",
    )
    topology.declare(channel, topology.shared_topology(bus))
    channel.queue_declare(reports, auto_delete=False)
    channel.queue_bind(reports, exchange, "imgline.host.#")
    conn.close()
    port = urlparse(amqp_url).port or 5672
    with http.running(site.root) as server:
        yield Lab(site, Services(server.port, port), amqp_url, exchange, reports)


@pytest.fixture
def lab(site: Site, amqp_url: str, exchange: str) -> Iterator[Lab]:
    with serving(site, amqp_url, exchange) as lab:
        yield lab


def _expect(host: Watcher, marker: str, timeout: float) -> float:
    seen = host.wait_for(marker, timeout)
    assert seen is not None, f"no {marker!r} within {timeout}s:\n{host.console[-4000:]}"
    return seen.seconds


def upgraded(host: Watcher, lab: Lab, old: HostRelease, new: HostRelease) -> None:
    """``new`` is up on trial, passes its health check, and the host says so on the bus."""
    _expect(host, f"{READY} {new.version}", APPLY_TIMEOUT)
    _expect(host, f"IMGLINE-HEALTH host.upgraded {new.version}", BOOT_TIMEOUT)
    report = lab.wait_report("host.upgraded", 180)
    assert (report["host_id"], report["from_version"], report["to_version"]) == (
        HOST_ID,
        old.version,
        new.version,
    )


def rolls_back(host: Watcher, lab: Lab, good: HostRelease, bad: HostRelease) -> None:
    """``bad`` is published, applied by the agent, fails its health check, and the host is back
    on ``good`` by itself (host.rolled_back). Prints the times the closing report quotes."""
    lab.publish(bad)
    t_bad = host.seconds
    _expect(host, f"IMGLINE-HEALTH host.rolled_back {bad.version}", APPLY_TIMEOUT)
    t_rollback = host.seconds
    _expect(host, f"{READY} {good.version}", BOOT_TIMEOUT)
    print(
        f"{bad.version}: applied and failed its health check after {t_rollback - t_bad:.0f}s; "
        f"back on {good.version} {host.seconds - t_rollback:.0f}s later"
    )
    rolled = lab.wait_report("host.rolled_back", 240)
    assert (rolled["from_version"], rolled["to_version"], rolled["step"]) == (
        good.version,
        bad.version,
        "health",
    )
    assert "node-payload.service" in str(rolled["error"])


def test_systemd_boot_host_applies_a_published_release_and_blesses_it(
    tmp_path: Path,
    node_liveimg: Path,
    releases: list[HostRelease],
    host_bus: HostBus,
) -> None:
    """systemd-boot on OVMF: the agent on v1 sees v2 in the signed repository, applies it and
    reboots; systemd-boot tries the entry with the counter in its file name, and v2 is kept."""
    v1, v2, _v3 = releases
    site = make_site(tmp_path / "repo")  # its own, pinned at this install
    disk = blank_disk(tmp_path / "host.img", 6144)
    _install(node_liveimg, v1, site, disk, config=host_bus.config, loader="systemd-boot")
    with serving(site, host_bus.amqp_url, host_bus.exchange) as lab:
        lab.publish(v2)
        console = tmp_path / "console.log"
        net = lab.services.net()
        with start_disk(disk, firmware="uefi", net=net, console_log=console) as host:
            _expect(host, f"{READY} {v1.version}", BOOT_TIMEOUT)
            t_apply = host.seconds
            upgraded(host, lab, v1, v2)
            print(f"v1 -> v2: applied, rebooted and healthy {host.seconds - t_apply:.0f}s after v1")


#: After each step: the default must still be v1 until switch_default, v2 (on trial) after.
CHECK = """\
python3 - "$1" <<'PY'
import json, sys
step = sys.argv[1]
state = json.load(open("/var/lib/imgline/state.json"))
journal = json.load(open("/var/lib/imgline/apply.json"))
env = open("/boot/grub/grubenv").read()
assert journal["version"] == "{v2}", journal
assert state["default_layer"] == "node-{v1}+1", state
if step == "switch_default":
    assert "imgline_default=imgline-node-{v2}" in env and "boot_counter=" in env, env
    assert "imgline_fallback=imgline-node-{v1}" in env, env
else:
    assert "imgline_default=imgline-node-{v1}" in env and "boot_counter" not in env, env
print("CRASH-CHECK-OK", step)
PY
"""


def test_grub_host_resumes_a_killed_apply_upgrades_and_rolls_back_a_bad_release(
    tmp_path: Path,
    grub_v1: Path,
    node_liveimg: Path,
    releases: list[HostRelease],
    lab: Lab,
) -> None:
    """GRUB, installed with v1: an apply of v2 killed after each of its steps and resumed; then
    the disk boots like a machine (SeaBIOS), v2 is blessed, the agent applies a published v3
    that fails its health check and the host is back on v2 by itself; last, the same disk
    starts through OVMF and GRUB's EFI image, with the same grub.cfg and grubenv."""
    v1, v2, v3 = releases
    disk = _copy(grub_v1, tmp_path / "host.img")
    apply_v2 = f"{UPDATER} apply --image /job/v2.img --sha256 {v2.sha256}"
    apply_v3 = f"{UPDATER} apply --image /job/v3.img --sha256 {v3.sha256}"
    lines = [MOUNT_HOST, "check() {", CHECK.format(v1=v1.version, v2=v2.version), "}"]
    for step in STEPS:
        lines += [
            f"rc=0; IMGLINE_UPDATER_CRASH_AFTER={step} {apply_v2} || rc=$?",
            f'[ "$rc" = 137 ] || {{ echo "apply survived the crash after {step}: $rc"; exit 1; }}',
            f"check {step}",
        ]
    # a crash, then another release: the leftovers of the first are cleaned up first
    lines += [
        f"rc=0; IMGLINE_UPDATER_CRASH_AFTER=copy {apply_v3} || rc=$?",
        '[ "$rc" = 137 ]',
        f"{UPDATER} abort",
        f"! lvs imgline/node-{v3.version} 2>/dev/null",
        "! test -e /var/lib/imgline/apply.json",
        # and the v2 apply that was cut after switch_default is finished by a rerun
        apply_v2,
        f"{UPDATER} status",
        "umount /boot /var",
    ]
    script = "\n".join(lines) + "\n"
    files = {"v2.img": v2.image, "v3.img": v3.image, "updater.toml": _offline_config(tmp_path)}
    run = helper(node_liveimg, script, disk, files, timeout=2400)
    for step in STEPS:
        assert f"CRASH-CHECK-OK {step}" in run.output
    lab.publish(v2)  # as on a real host: the release it was given is the one offered
    console = tmp_path / "console.log"
    with start_disk(disk, firmware="bios", net=lab.services.net(), console_log=console) as host:
        upgraded(host, lab, v1, v2)
        rolls_back(host, lab, v2, v3)
    with start_disk(disk, firmware="uefi", console_log=tmp_path / "uefi.log") as host:
        _expect(host, f"{READY} {v2.version}", BOOT_TIMEOUT)
    seen = inspect(node_liveimg, disk)
    assert seen.state["default_layer"] == f"node-{v2.version}+1"
    assert seen.state["bad_versions"] == [v3.version]
    assert seen.state["pending"] is None
    # the three-way /etc merge: admin's edit kept, vendor's update taken, a conflict saved
    assert seen.etc["admin.conf"] == ADMIN_EDITS["admin.conf"]
    assert seen.etc["vendor.conf"] == "vendor 2\n"
    assert seen.etc["both.conf"] == ADMIN_EDITS["both.conf"]
    assert seen.etc["both.conf.imgnew"] == "vendor 2\n"
    # the installer's drop-in went with /etc into the new layers
    assert "Restart=on-failure" in seen.etc["lvm2-monitor-retry"]


def _offline_config(tmp_path: Path) -> Path:
    path = tmp_path / "updater.toml"
    path.write_text(config_toml())
    return path
