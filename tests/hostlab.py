"""A test host for the updater: its config, the helper-guest jobs that install and inspect its
disk, and the signed repository and broker it talks to (used by the vm tier, bench/apply.py
and the demo).

The host sees this machine's loopback services only through qemu's ``guestfwd``: the
repository as ``http://10.0.2.100:8090`` and the broker as ``10.0.2.100:5672``.
"""

from __future__ import annotations

import base64
import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from hostimages import HostRelease
from vmguest import GUEST_SERVICES_ADDR, GuestRun, NetSpec, run_helper

REPO_PORT = 8090
AMQP_PORT = 5672
HOST_ID = "vm-host"


@dataclass(frozen=True)
class Services:
    """Where the host's repository and broker are on this machine (127.0.0.1 ports)."""

    repo_port: int
    amqp_port: int | None = None

    def net(self) -> NetSpec:
        forwards = {REPO_PORT: self.repo_port}
        if self.amqp_port is not None:
            forwards[AMQP_PORT] = self.amqp_port
        return NetSpec(guest_forwards=forwards)


def guest_amqp_url(url: str) -> str:
    """``url`` (a broker on this machine's loopback) as the host reaches it: same user,
    password and vhost, through the guest forward to :data:`AMQP_PORT`."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@" if userinfo else ""
    return urlunsplit(parts._replace(netloc=f"{netloc}{GUEST_SERVICES_ADDR}:{AMQP_PORT}"))


def config_toml(
    *,
    amqp_url: str | None = None,
    exchange: str = "imgline",
    boot_tries: int = 2,
    settle_seconds: int = 40,
    refresh_seconds: int = 15,
    policy: str = "auto",
) -> str:
    """The host's /etc/imgline/updater.toml; with ``amqp_url`` (as this machine sees the
    broker) the host reports on the bus, without it the host only pulls."""
    bus = (
        f'amqp_url = "{guest_amqp_url(amqp_url)}"\n'
        f'exchange = "{exchange}"\n'
        f'dead_letter_exchange = "{exchange}.dlx"\n'
        f'dead_letter_queue = "{exchange}.dead-letter"\n'
        if amqp_url
        else ""
    )
    return (
        'service = "updater"\n'
        f"{bus}"
        "[consumer_config]\n"
        f'host_id = "{HOST_ID}"\n'
        'name = "node"\n'
        'stream = "stable"\n'
        f'repository_url = "http://{GUEST_SERVICES_ADDR}:{REPO_PORT}"\n'
        f'policy = "{policy}"\n'
        f"boot_tries = {boot_tries}\n"
        f"refresh_interval_seconds = {refresh_seconds}\n"
        "[consumer_config.health]\n"
        'units = ["node-payload.service"]\n'
        f"settle_seconds = {settle_seconds}\n"
        "[consumer_config.layout]\n"
        # three layers' kernels (about 40 MiB each) and GRUB for BIOS and UEFI
        "boot_mib = 256\n"
        "root_extra_mib = 256\n"
        'volumes = {"/var" = 512, "/var/log" = 128, "/var/tmp" = 64, "/home" = 64}\n'
    )


UPDATER = "PYTHONPATH=/job/site python3 -m imgline.updater --config /job/updater.toml"


def install_script(
    release: HostRelease, boot_loader: str, admin_edits: Mapping[str, str] | None = None
) -> str:
    """Install ``release`` (job file ``image.img``) on the first disk; then play the admin and
    write ``admin_edits`` (path under /etc → text) into the new layer's /etc."""
    lines = [
        f'{UPDATER} install --disk "$IMGLINE_DISK0" --image /job/image.img'
        f" --sha256 {release.sha256} --boot-loader {boot_loader}"
        " --root-metadata /job/root.json --agent-site /job/site",
    ]
    if admin_edits:
        layer = f"node-{release.version}+1"
        lines += ["mkdir -p /mnt/layer", f"mount /dev/imgline/{shlex.quote(layer)} /mnt/layer"]
        for rel, text in admin_edits.items():
            path = shlex.quote(f"/mnt/layer/etc/{rel}")
            lines += [f'mkdir -p "$(dirname {path})"', f"printf %s {shlex.quote(text)} > {path}"]
        lines.append("umount /mnt/layer")
    return "\n".join(lines) + "\n"


#: Mount the host's /boot and /var where the updater expects them, inside a helper guest.
MOUNT_HOST = """\
vgchange -ay imgline >/dev/null
mount "${IMGLINE_DISK0}2" /boot
mount /dev/imgline/var /var
"""

INSPECT = """\
echo "STATE-BEGIN"; cat /var/lib/imgline/state.json; echo "STATE-END"
layer=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["default_layer"])' \
  < /var/lib/imgline/state.json)
mkdir -p /mnt/layer && mount -o ro "/dev/imgline/$layer" /mnt/layer
for f in /mnt/layer/etc/imgline-test/*; do echo "FILE ${f##*/} $(base64 -w0 < "$f")"; done
f=/mnt/layer/etc/systemd/system/lvm2-monitor.service.d/50-imgline-retry.conf
if [ -e "$f" ]; then echo "FILE lvm2-monitor-retry $(base64 -w0 < "$f")"; fi
umount /mnt/layer
"""


@dataclass(frozen=True)
class Inspection:
    state: dict[str, object]
    etc: dict[str, str]


def parse_inspection(output: str) -> Inspection:
    state_text = output.split("STATE-BEGIN", 1)[1].split("STATE-END", 1)[0]
    etc = {}
    for line in output.splitlines():
        if line.startswith("FILE "):
            _f, name, data = [*line.split(" ", 2), ""][:3]
            etc[name] = base64.b64decode(data).decode()
    return Inspection(json.loads(state_text), etc)


def inspect(image: Path, disk: Path) -> Inspection:
    run = run_helper(image, MOUNT_HOST + INSPECT, disks=[disk], timeout=300)
    assert run.rc == 0, f"inspecting {disk} failed:\n{run.output[-3000:]}"
    return parse_inspection(run.output)


def helper(
    image: Path,
    script: str,
    disk: Path,
    files: Mapping[str, Path],
    *,
    timeout: float = 1200,
    workdir: Path | None = None,
) -> GuestRun:
    """Run ``script`` in a helper guest with the host's disk and the updater's packages."""
    run = run_helper(
        image,
        script,
        disks=[disk],
        files=dict(files),
        python_bundle=True,
        timeout=timeout,
        workdir=workdir,
    )
    assert run.rc == 0, f"helper job failed (rc {run.rc}):\n{run.output[-6000:]}"
    return run
