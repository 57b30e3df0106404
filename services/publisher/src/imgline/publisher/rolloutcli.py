"""``imgline-publisher rollout``: what an operator does to a staged rollout by hand.

``show`` prints each stream's signed rollouts; ``pause`` stops a release (with a reason),
``resume`` lifts a pause (the controller's or an operator's), ``open`` sets the share of hosts
it is open to (1 opens it to all). Each change is one signed commit, like the controller's;
hosts obey it at their next check. Runs where the publisher runs (same config, same online
keys); the repository lock keeps it from racing the service.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imgline.core.config import BusSettings, load_settings
from imgline.core.errors import ImglineError
from imgline.core.trust import layout
from imgline.core.trust.keys import KeyDir
from imgline.core.trust.rollout import Rollout, ppm
from imgline.publisher.adapters.repo import Repository
from imgline.publisher.settings import PublisherConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgline-publisher rollout", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML file (default: $IMGLINE_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("show", help="every stream's signed rollouts")
    for name, text in (
        ("pause", "stop a release from reaching more hosts"),
        ("resume", "lift a pause"),
        ("open", "set the share of hosts a release is open to"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("stream")
        cmd.add_argument("name")
        cmd.add_argument("version")
        if name == "pause":
            cmd.add_argument("--reason", required=True)
        if name == "open":
            cmd.add_argument("share", type=float, help="0 to 1, e.g. 0.1 for 10%%")
    return parser


def _change(args: argparse.Namespace, current: Rollout | None) -> Rollout:
    now = layout.now()
    share = 1.0 if current is None else current.share
    if args.command == "pause":
        return Rollout(
            name=args.name,
            version=args.version,
            share_ppm=ppm(share),
            paused=True,
            reason=args.reason,
            changed=now,
        )
    if args.command == "open":
        share = args.share
    return Rollout(name=args.name, version=args.version, share_ppm=ppm(share), changed=now)


def _show(repo: Repository) -> None:
    state = repo.load()
    for stream in state.streams():
        for r in repo.rollouts(stream, state).rollouts:
            status = f"PAUSED ({r.reason})" if r.paused else "open"
            when = r.changed.isoformat()
            print(f"{stream} {r.name} {r.version}: {r.share:.1%} of hosts, {status}, since {when}")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "open" and not 0.0 <= args.share <= 1.0:
        print("imgline-publisher rollout: the share is between 0 and 1", file=sys.stderr)
        return 2
    try:
        settings = load_settings(BusSettings, args.config, service="publisher")
        config = PublisherConfig.model_validate(settings.consumer_config)
        repo = Repository(config.repo_dir, KeyDir(config.keys_dir), config.base_url)
        if args.command == "show":
            _show(repo)
            return 0
        after = repo.update_rollout(
            args.stream, args.name, args.version, lambda current: _change(args, current)
        )
    except (ImglineError, ValueError) as exc:
        print(f"imgline-publisher rollout: {exc}", file=sys.stderr)
        return 2
    assert after is not None  # noqa: S101 - _change always returns a rollout
    print(
        f"{args.stream} {args.name} {args.version}: {after.share:.1%} of hosts"
        + (f", paused ({after.reason})" if after.paused else ", open")
    )
    return 0
