"""The ``imgline`` command: operator tasks that belong to no single service."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from imgline.core import logs
from imgline.core.broker import PrivateBroker
from imgline.core.bus.topology import default_definitions_json
from imgline.core.errors import ImglineError


def _broker(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with PrivateBroker(base_dir=args.dir) as broker:
        print(f"IMGLINE_AMQP_URL={broker.url}", flush=True)
        stop.wait()
    return 0


def _definitions(args: argparse.Namespace) -> int:
    text = default_definitions_json()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imgline", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("broker", help="run a private RabbitMQ node until interrupted")
    b.add_argument("--dir", type=Path, default=None, help="data directory (default: a temp dir)")
    b.set_defaults(func=_broker)
    d = sub.add_parser("definitions", help="print the RabbitMQ definitions of the pipeline")
    d.add_argument("-o", "--output", help="write to this file instead of stdout")
    d.set_defaults(func=_definitions)
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    try:
        code: int = args.func(args)
    except ImglineError as exc:
        print(f"imgline: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
