"""``imgline build request`` and ``imgline status``: ask for a build and follow it, and trace a
build from its request to the hosts that run it, from the ledger (docs/operations.md).

The CLI publishes as the trigger does (the only bus user that may send ``build.requested``) and
reads the ledger's SQLite file; it never writes it.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from imgline.core.bus.publisher import Publisher
from imgline.core.config import BusSettings, load_settings
from imgline.core.errors import ConfigError
from imgline.core.ledger.events import Event
from imgline.core.ledger.fleet import StreamFleet, fleet
from imgline.core.ledger.store import Ledger
from imgline.core.ledger.trace import FINAL, BuildTrace, host_reports, span, trace, when
from imgline.schemas import payloads as p
from imgline.schemas.messages import BuildRequestedV1

LEDGER_ENV = "IMGLINE_LEDGER"
#: Exit codes of ``--follow``: published, ended without a release, still going at the timeout.
EXIT_PUBLISHED, EXIT_NOT_PUBLISHED, EXIT_TIMEOUT = 0, 1, 3


def _ledger(args: argparse.Namespace) -> Ledger:
    path = args.ledger or os.environ.get(LEDGER_ENV)
    if not path:
        raise ConfigError(f"where is the ledger? pass --ledger or set {LEDGER_ENV}")
    return Ledger(Path(path), readonly=True)


def traced(ledger: Ledger, build_id: str, events: list[Event] | None = None) -> BuildTrace:
    """The trace of ``build_id`` (from ``events`` when the caller read them already) with the
    hosts' reports about the version it made."""
    out = trace(build_id, ledger.build(build_id) if events is None else events, [])
    if out.name and out.version and out.state == "published":
        out.hosts = host_reports(ledger.host_reports(out.name, out.version))
    return out


def _print_json(doc: dict[str, Any], out: TextIO) -> None:
    json.dump(doc, out, indent=2)
    out.write("\n")


def _resolve(ledger: Ledger, wanted: str) -> str:
    found = ledger.build_ids(wanted.lower())
    if not found:
        raise ConfigError(f"no build {wanted} in the ledger {ledger.path}")
    if len(found) > 1 and wanted.lower() not in found:
        shown = ", ".join(b[:16] for b in found[:5])
        raise ConfigError(f"{wanted} is ambiguous: {shown}; give more digits")
    return wanted.lower() if wanted.lower() in found else found[0]


def _fleet_line(group: StreamFleet) -> str:
    versions = ", ".join(f"{v}: {n}" for v, n in sorted(group.by_version.items()))
    return (
        f"  {group.name} on {group.stream}: latest {group.latest or 'none'}, "
        f"{group.hosts} host(s), {group.outdated} outdated" + (f" ({versions})" if versions else "")
    )


def next_request(
    ledger: Ledger,
    timeout: float,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    poll: float = 0.5,
) -> str | None:
    """The build of the first request the ledger records from now on (a push about to be
    made), or None when ``timeout`` passes first."""
    since = clock()
    while True:
        found = ledger.first_request_since(since)
        if found is not None or clock() - since > timeout:
            return found
        sleep(poll)


def _follow_status(ledger: Ledger, args: argparse.Namespace, out: TextIO) -> int:
    if args.build:
        build_id = _resolve(ledger, args.build)
    else:
        out.write("waiting for the next build request (a push, a webhook, imgline build)\n")
        out.flush()
        found = next_request(ledger, args.timeout)
        if found is None:
            out.write(f"no build was requested within {span(args.timeout)}\n")
            return EXIT_TIMEOUT
        build_id = found
    return _follow_and_report(ledger, build_id, args, out)


def _follow_and_report(ledger: Ledger, build_id: str, args: argparse.Namespace, out: TextIO) -> int:
    """``--follow``: the live lines, on stderr when ``--json`` wants stdout for the trace."""
    code, final = follow(ledger, build_id, args.timeout, sys.stderr if args.json else out)
    if args.json:
        _print_json(final.as_json(), out)
    return code


def status(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    ledger = _ledger(args)
    if args.follow:
        return _follow_status(ledger, args, out)
    if args.build:
        one = traced(ledger, _resolve(ledger, args.build))
        if args.json:
            _print_json(one.as_json(), out)
        else:
            out.write("\n".join(one.lines()) + "\n")
        return 0
    builds = [traced(ledger, b) for b in ledger.recent_builds(args.limit)]
    groups = fleet(ledger.hosts_now(), ledger.releases_now())
    if args.json:
        _print_json(
            {"builds": [b.as_json() for b in builds], "fleet": [g.__dict__ for g in groups]},
            out,
        )
        return 0
    out.write(f"last {len(builds)} build(s), newest first:\n")
    for b in builds:
        started = when(b.stages[0].at) if b.stages else "?"
        out.write(f"  {started}  {b.headline()}\n")
    out.write("fleet:\n" if groups else "fleet: no host has reported yet\n")
    for group in groups:
        out.write(_fleet_line(group) + "\n")
    return 0


def follow(
    ledger: Ledger,
    build_id: str,
    timeout: float,
    out: TextIO,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    poll: float = 0.5,
    heartbeat: float = 30.0,
) -> tuple[int, BuildTrace]:
    """Print each stage of ``build_id`` as the ledger records it, until the build ends or
    ``timeout`` passes; a line every ``heartbeat`` seconds says what it waits for."""
    seen: set[str] = set()
    start = last_line = clock()
    while True:
        events = ledger.build(build_id)
        current = traced(ledger, build_id, events)
        for event, stage in zip(events, current.stages, strict=True):  # a stage per event
            if event.id not in seen:
                seen.add(event.id)
                out.write(stage.line() + "\n")
                out.flush()
                last_line = clock()
        if current.state in FINAL:
            code = EXIT_PUBLISHED if current.state == "published" else EXIT_NOT_PUBLISHED
            out.write(f"{current.headline()} after {span(clock() - start)}\n")
            return code, current
        now = clock()
        if now - start > timeout:
            out.write(f"{current.headline()}: still going after {span(now - start)}; stopped\n")
            return EXIT_TIMEOUT, current
        if now - last_line >= heartbeat:
            out.write(f"  … {current.state} ({span(now - start)} so far)\n")
            out.flush()
            last_line = now
        sleep(poll)


def _source(args: argparse.Namespace) -> p.GitSource | p.InlineSource:
    if args.kickstart is not None:
        if args.git:
            raise ConfigError("give --kickstart or --git, not both")
        try:
            text = args.kickstart.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--kickstart {args.kickstart}: cannot read it: {exc}") from exc
        return p.InlineSource(kickstart=text)
    if not args.git or not args.path:
        raise ConfigError("give --kickstart FILE, or --git URL with --path KICKSTART")
    return p.GitSource(url=args.git, ref=args.ref, commit=args.commit, kickstart_path=args.path)


def request(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        payload = p.BuildRequested(
            request_id=f"cli-{uuid.uuid4().hex[:16]}",
            source=_source(args),
            name=args.name,
            stream=args.stream,
            backend=args.backend,
            version=args.version,
            requested_by=f"{getpass.getuser()} (imgline CLI)",
        )
    except ValueError as exc:  # pydantic's ValidationError: the field and what is wrong
        raise ConfigError(f"the request is not valid: {exc}") from exc
    ledger = _ledger(args) if args.follow else None  # before publishing: fail early
    settings = load_settings(BusSettings, args.config, service="trigger")
    if not settings.amqp_url:
        raise ConfigError("no broker: set amqp_url in --config or IMGLINE_AMQP_URL")
    publisher = Publisher(settings, settings.amqp_url)
    try:
        publisher.publish(BuildRequestedV1.from_payload(payload, settings.topic_prefix))
    finally:
        publisher.close()
    if ledger is None:
        if args.json:
            json.dump({"build_id": payload.build_id, "request_id": payload.request_id}, out)
            out.write("\n")
        else:
            out.write(f"requested build {payload.build_id} (request {payload.request_id})\n")
        return 0
    out.write(f"requested build {payload.build_id[:12]} of {payload.name}; following it\n")
    return _follow_and_report(ledger, payload.build_id, args, out)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ledger_help = f"the ledger's SQLite file (default ${LEDGER_ENV})"
    st = sub.add_parser(
        "status",
        help="trace a build from request to hosts, or list recent builds and the fleet",
    )
    st.add_argument("build", nargs="?", metavar="BUILD", help="a build id or its first digits")
    st.add_argument("--ledger", type=Path, help=ledger_help)
    st.add_argument("--limit", type=int, default=20, help="builds listed (default 20)")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument(
        "--follow",
        action="store_true",
        help="show each stage live until the build ends; without BUILD, the next one requested",
    )
    st.add_argument("--timeout", type=float, default=3600.0, help="--follow gives up after this")
    st.set_defaults(func=status)

    b = sub.add_parser("build", help="ask the pipeline for a build")
    bsub = b.add_subparsers(dest="build_command", required=True)
    r = bsub.add_parser("request", help="publish build.requested (and --follow it)")
    r.add_argument("--name", required=True, help="the image's name, e.g. node")
    r.add_argument("--stream", default="main")
    r.add_argument("--backend", choices=("mmdebstrap", "livemedia-creator"), default="mmdebstrap")
    r.add_argument("--version", help="pin the version (default: the builder makes one)")
    r.add_argument("--kickstart", type=Path, metavar="FILE", help="send this kickstart inline")
    r.add_argument("--git", metavar="URL", help="the repository holding the kickstart")
    r.add_argument("--ref", default="HEAD", help="branch or tag (default HEAD)")
    r.add_argument("--commit", help="pin a commit (hex)")
    r.add_argument("--path", metavar="KICKSTART", help="the kickstart's path in the repository")
    r.add_argument("--config", type=Path, help="TOML with amqp_url (default $IMGLINE_CONFIG)")
    r.add_argument("--follow", action="store_true", help="show each stage until the build ends")
    r.add_argument("--ledger", type=Path, help=ledger_help)
    r.add_argument("--timeout", type=float, default=3600.0, help="--follow gives up after this")
    r.add_argument("--json", action="store_true", help="print JSON (the final trace)")
    r.set_defaults(func=request)
