"""``imgline-updater``: the host agent and the admin's commands (docs/updater.md).

One TOML file configures a host (``/etc/imgline/updater.toml``): the bus settings at the top
level and the host's own settings in ``[consumer_config]``. Commands that only touch the host
(install, apply, health, rollback, status, gc) need no broker.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from pydantic import ValidationError

from imgline.core import logs
from imgline.core.config import BusSettings, load_settings
from imgline.core.errors import ConfigError, ImglineError
from imgline.updater import agent, health, hostlock
from imgline.updater.adapters.system import System
from imgline.updater.apply import Release
from imgline.updater.host import LocalHost, machine_id
from imgline.updater.image import inspect
from imgline.updater.install import CONFIG_PATH, Installer
from imgline.updater.outbox import Outbox
from imgline.updater.settings import HostConfig

log = logging.getLogger("imgline.updater")


def load(path: Path | None) -> tuple[BusSettings, HostConfig, str]:
    """The bus settings, the host config and the file's text (install copies it to the host)."""
    if path is None and CONFIG_PATH.exists():
        path = CONFIG_PATH
    bus = load_settings(BusSettings, path, service="updater")
    try:
        host = HostConfig.model_validate(bus.consumer_config)
    except ValidationError as exc:
        raise ConfigError(f"invalid [consumer_config] in {path or 'defaults'}: {exc}") from exc
    text = path.read_text() if path is not None else ""
    return bus, host, text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgline-updater", description=__doc__)
    parser.add_argument("--config", type=Path, help=f"TOML file (default: {CONFIG_PATH})")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    ins = sub.add_parser("install", help="make a blank disk a host running IMAGE (destroys it)")
    ins.add_argument("--disk", type=Path, required=True)
    ins.add_argument("--image", type=Path, required=True, help="a liveimg squashfs")
    ins.add_argument("--sha256", required=True, help="the image's expected sha256")
    ins.add_argument("--boot-loader", choices=("grub", "systemd-boot"), default="grub")
    ins.add_argument(
        "--root-metadata",
        type=Path,
        help="the repository's root.json to pin (the agent needs it)",
    )
    ins.add_argument(
        "--agent-site", type=Path, help="the updater's Python packages to copy onto the host"
    )

    app = sub.add_parser("apply", help="apply an image file now (resumes an unfinished apply)")
    app.add_argument("--image", type=Path, required=True)
    app.add_argument("--sha256", required=True)
    app.add_argument("--reboot", action="store_true", help="reboot into it (unless locked)")

    sub.add_parser("adopt", help="take over a host anaconda installed from install.ks")
    sub.add_parser("abort", help="clean up an unfinished apply")
    sub.add_parser("health", help="check this boot; bless or roll back the pending layer")
    rb = sub.add_parser("rollback", help="make an older layer the default again")
    rb.add_argument("--to", dest="to_version", help="the version to go back to")
    rb.add_argument("--no-reboot", action="store_true")
    st = sub.add_parser("status", help="layers, default, pending, last result")
    st.add_argument("--json", action="store_true")
    sub.add_parser("gc", help="remove layers beyond keep_layers")
    rm = sub.add_parser("remove", help="remove one layer that is not in use")
    rm.add_argument("version")
    sub.add_parser("run", help="the agent: follow the stream and apply releases")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure(args.log_level)
    try:
        bus, config, text = load(args.config)
        return _dispatch(args, bus, config, text)
    except ImglineError as exc:
        step = getattr(exc, "step", "")
        print(f"imgline-updater: {f'{step}: ' if step else ''}{exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


@dataclass(frozen=True)
class Context:
    bus: BusSettings
    config: HostConfig
    text: str

    @cached_property
    def host(self) -> LocalHost:
        return LocalHost(self.config, log_file=sys.stderr)

    @cached_property
    def outbox(self) -> Outbox:
        return Outbox(self.config.state_dir / "outbox")


#: Commands that change the host's layers, boot entries or state: one at a time, and never
#: while the agent applies (``hostlock``). ``install`` writes another disk; ``run`` locks per check.
CHANGING = frozenset({"apply", "adopt", "abort", "rollback", "gc", "remove", "health"})


def _dispatch(args: argparse.Namespace, bus: BusSettings, config: HostConfig, text: str) -> int:
    ctx = Context(bus, config, text)
    if args.command not in CHANGING:
        return COMMANDS[args.command](args, ctx)
    wait = hostlock.HEALTH_WAIT_SECONDS if args.command == "health" else 0.0
    with hostlock.changing(config, wait_seconds=wait):
        return COMMANDS[args.command](args, ctx)


def cmd_install(args: argparse.Namespace, ctx: Context) -> int:
    system = System(sys.stderr)
    info = inspect(system, args.image)
    release = Release(info.name, info.version, info.build_id, args.sha256, args.image)
    Installer(
        ctx.config,
        system,
        boot_loader_kind=args.boot_loader,
        config_text=ctx.text,
        agent_site=args.agent_site,
        root_metadata=args.root_metadata.read_bytes() if args.root_metadata else None,
    ).install(args.disk, release)
    print(f"installed {info.name} {info.version} on {args.disk}")
    return 0


def cmd_apply(args: argparse.Namespace, ctx: Context) -> int:
    if ctx.config.policy == "disabled":
        print("imgline-updater: policy is disabled on this host: nothing applied", file=sys.stderr)
        return 1
    info = inspect(ctx.host.system, args.image)
    release = Release(info.name, info.version, info.build_id, args.sha256, args.image)
    layer = ctx.host.applier().apply(release)
    print(f"applied {info.version} as {layer.layer_lv}; it boots next")
    if args.reboot:
        ctx.host.reboot()
    return 0


def cmd_adopt(args: argparse.Namespace, ctx: Context) -> int:
    state = ctx.host.adopt()
    if state is None:
        print(
            f"imgline-updater: nothing to adopt: {ctx.host.files.state} exists or this host was "
            "not installed from an imgline install.ks",
            file=sys.stderr,
        )
        return 1
    print(f"adopted {state.name} {state.default_layer} ({state.boot_loader})")
    return 0


def cmd_abort(args: argparse.Namespace, ctx: Context) -> int:
    ctx.host.applier().abort()
    return 0


def cmd_rollback(args: argparse.Namespace, ctx: Context) -> int:
    event = ctx.host.rollback(machine_id(ctx.config), args.to_version)
    ctx.outbox.put(event)
    print(f"default is now {event.from_version} (was {event.to_version})")
    if not args.no_reboot:
        ctx.host.reboot()
    return 0


def cmd_gc(args: argparse.Namespace, ctx: Context) -> int:
    for lv in ctx.host.gc():
        print(f"removed {lv}")
    return 0


def cmd_remove(args: argparse.Namespace, ctx: Context) -> int:
    print(f"removed {ctx.host.remove(args.version)}")
    return 0


def cmd_run(args: argparse.Namespace, ctx: Context) -> int:
    with hostlock.changing(ctx.config, wait_seconds=hostlock.HEALTH_WAIT_SECONDS):
        adopted = ctx.host.adopt()
    if adopted is not None:  # first start on a host anaconda installed
        log.info("adopted the host anaconda installed")
    return agent.run(ctx.bus, ctx.config, ctx.host)


def cmd_health(args: argparse.Namespace, ctx: Context) -> int:
    host, config = ctx.host, ctx.config
    state = host.state()
    running = host.running(state)

    def checks() -> list[health.Check]:
        return health.run_checks(config.health, host.lvm(state))

    settler = health.BootSettler(machine_id(config), state, host.loader(state), host.files)
    settled = settler.settle(running, checks)
    if settled.event is not None:
        ctx.outbox.put(settled.event)
        print(f"IMGLINE-HEALTH {settled.event.topic} {settled.event.to_version}", flush=True)
        if settled.reboot:
            host.reboot()
        return 0 if settled.event.topic == "host.upgraded" else 1
    results = checks()
    ok = all(c.ok for c in results)
    version = running.version if running else "?"
    print(
        f"IMGLINE-HEALTH {'ok' if ok else 'failed'} {version}: {health.summary(results)}",
        flush=True,
    )
    return 0 if ok else 1


def cmd_status(args: argparse.Namespace, ctx: Context) -> int:
    host, as_json = ctx.host, args.json
    state = host.state()
    running = host.running(state)
    if as_json:
        doc = state.model_dump(mode="json")
        doc["running_layer"] = running.layer_lv if running else None
        print(json.dumps(doc, indent=2))
        return 0
    print(f"{state.name} on stream {state.stream} ({state.boot_loader}, VG {state.vg})")
    for layer in state.layers:
        marks = [
            m
            for m, on in (
                ("default", layer.layer_lv == state.default_layer),
                ("running", running is not None and layer.layer_lv == running.layer_lv),
                ("pending", state.pending is not None and state.pending.layer_lv == layer.layer_lv),
                ("bad", layer.version in state.bad_versions),
            )
            if on
        ]
        print(f"  {layer.version:<20} {layer.layer_lv:<32} {' '.join(marks)}")
    if state.last_result is not None:
        r = state.last_result
        extra = f" at {r.step}: {r.error}" if r.error else ""
        print(f"last: {r.kind} {r.version} ({r.at:%Y-%m-%d %H:%M}){extra}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Context], int]] = {
    "install": cmd_install,
    "apply": cmd_apply,
    "adopt": cmd_adopt,
    "abort": cmd_abort,
    "health": cmd_health,
    "rollback": cmd_rollback,
    "status": cmd_status,
    "gc": cmd_gc,
    "remove": cmd_remove,
    "run": cmd_run,
}


if __name__ == "__main__":
    raise SystemExit(main())
