"""The ``imgline`` command: operator tasks that belong to no single service."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from imgline.core import logs, signing
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


def _keys_generate(args: argparse.Namespace) -> int:
    key = signing.generate_key(args.path)
    print(
        f"wrote private key {args.path}: keep it secret, paste the ed25519: line into hosts",
        file=sys.stderr,
    )
    _print_public(key)
    return 0


def _keys_show(args: argparse.Namespace) -> int:
    _print_public(signing.load_signing_key(args.path))
    return 0


def _print_public(key: signing.SigningKey) -> None:
    print(f"key id: {key.key_id}")
    print(key.public_text())


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
    k = sub.add_parser("keys", help="manage the Ed25519 keys that sign repository metadata")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    kg = ksub.add_parser("generate", help="create a new private key (never overwrites)")
    kg.add_argument("path", type=Path, help="where to write the private key (mode 0600)")
    kg.set_defaults(func=_keys_generate)
    ks = ksub.add_parser("show", help="print the key id and public key of a private key")
    ks.add_argument("path", type=Path, help="the private key file")
    ks.set_defaults(func=_keys_show)
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
