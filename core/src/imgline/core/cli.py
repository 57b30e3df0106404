"""The ``imgline`` command: operator tasks that belong to no single service."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from tuf.api.metadata import Signed

from imgline.core import logs, statuscli
from imgline.core.broker import PrivateBroker
from imgline.core.bus import access
from imgline.core.bus.topology import default_definitions_json
from imgline.core.errors import ConfigError, ImglineError
from imgline.core.trust import admin, layout
from imgline.core.trust.keys import KEY_SUFFIX, REVOKED_SUFFIX, KeyDir
from imgline.core.trust.repository import State, TufRepository

SHORT = 16  # hex digits of a key id shown to operators


def _broker(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with PrivateBroker(base_dir=args.dir) as broker:
        # the administrator's URL first; each service should use its own user's
        print(f"IMGLINE_AMQP_URL={broker.url}", flush=True)
        for user in access.ROLE_BY_USER:
            print(f"# {user}: {broker.url_for(user)}", flush=True)
        stop.wait()
    return 0


def _definitions(args: argparse.Namespace) -> int:
    text = default_definitions_json()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


# --- imgline repo ----------------------------------------------------------------------------


def _short(keyids: list[str]) -> str:
    return ", ".join(k[:SHORT] for k in keyids) or "none"


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _existing_dir(path: Path, what: str, option: str) -> KeyDir:
    """A key directory that must already exist: a mistyped path (or an offline disk that is
    not mounted) must not become a new, empty key directory with stray keys in it."""
    if not path.is_dir():
        raise ConfigError(f"{option} {path}: no such directory ({what})")
    return KeyDir(path)


def _repo(args: argparse.Namespace) -> TufRepository:
    keys = _existing_dir(args.keys, "the publisher's online keys", "--keys")
    return TufRepository(args.repo_dir, keys)


def _root_keys(args: argparse.Namespace) -> KeyDir | None:
    if args.root_keys is None:
        return None  # the ceremonies refuse, before making any key, when a role needs them
    return _existing_dir(args.root_keys, "mount the offline root keys", "--root-keys")


def _repo_init(args: argparse.Namespace) -> int:
    if args.keys.resolve() == args.root_keys.resolve():
        raise ConfigError(
            "--keys and --root-keys must be different directories: the root keys are moved "
            "offline, the online keys stay with the publisher"
        )
    keys, root_keys = KeyDir(args.keys), KeyDir(args.root_keys)
    repo = TufRepository.init(
        args.repo_dir,
        keys,
        root_keys,
        root_threshold=args.root_threshold,
        root_key_count=args.root_key_count,
    )
    state = repo.load()
    root = state.root.signed
    print(f"created the repository at {args.repo_dir} (root version {root.version})")
    for role in layout.TOP_LEVEL:
        spec = root.roles[role]
        store = root_keys if role == "root" else keys
        print(
            f"  {role:<9} threshold {spec.threshold}, key(s) {_short(spec.keyids)} "
            f"in {store.role_dir(role)}"
        )
    print(
        f"root keys: {root_keys.role_dir('root')}: move them OFFLINE now (and back them up); "
        "they are needed only to change the keys of root, targets, snapshot or timestamp and "
        "for `imgline repo resign-root` before the root expires "
        f"({_when(root.expires)})"
    )
    print(f"hosts pin: {repo.metadata_dir / '1.root.json'}")
    print(f"online keys: {keys.directory} (the publisher's key directory, keep it at 0700)")
    return 0


def _report_change(
    repo: TufRepository, root_keys: KeyDir | None, change: admin.KeyChange, before: int
) -> None:
    store = root_keys if change.role == "root" and root_keys is not None else repo.keys
    for keyid in change.added:
        path = store.role_dir(change.role) / f"{keyid}{KEY_SUFFIX}"
        print(f"{change.role}: added key {keyid[:SHORT]} ({path})")
    print(f"{change.role}: threshold {change.threshold}")
    if change.root_version != before:
        name = layout.metadata_file("root", change.root_version)
        print(
            f"wrote root version {change.root_version} ({repo.metadata_dir / name}), signed "
            f"as root version {before} requires: hosts accept it on their next update"
        )
    else:
        print(
            f"signed targets and {change.role} again, with a new snapshot and timestamp: "
            "hosts see the change on their next update"
        )
    for keyid in change.removed:
        retired = store.role_dir(change.role) / f"{keyid}{KEY_SUFFIX}{REVOKED_SUFFIX}"
        where = f"its file is now {retired}" if retired.exists() else "its file was not here"
        print(f"{change.role}: hosts no longer trust key {keyid[:SHORT]} ({where})")
    if change.role == "root" and change.added:
        print(f"move the new root key(s) OFFLINE with the others: {store.role_dir('root')}")


def _key_ceremony(
    args: argparse.Namespace,
    ceremony: Callable[[TufRepository, KeyDir | None], admin.KeyChange],
) -> int:
    repo, root_keys = _repo(args), _root_keys(args)
    before = repo.root_version()
    _report_change(repo, root_keys, ceremony(repo, root_keys), before)
    return 0


def _repo_add_key(args: argparse.Namespace) -> int:
    return _key_ceremony(
        args,
        lambda repo, rk: admin.add_key(repo, args.role, root_keys=rk, threshold=args.threshold),
    )


def _repo_rotate(args: argparse.Namespace) -> int:
    return _key_ceremony(args, lambda repo, rk: admin.rotate(repo, args.role, root_keys=rk))


def _repo_revoke(args: argparse.Namespace) -> int:
    return _key_ceremony(
        args, lambda repo, rk: admin.revoke(repo, args.role, args.keyid, root_keys=rk)
    )


def _repo_resign_root(args: argparse.Namespace) -> int:
    repo, root_keys = _repo(args), _root_keys(args)
    assert root_keys is not None  # noqa: S101 - required by the parser
    version = admin.resign_root(repo, root_keys)
    expires = repo.load().root.signed.expires
    name = layout.metadata_file("root", version)
    print(f"wrote root version {version} ({repo.metadata_dir / name}), expires {_when(expires)}")
    print(f"move the root keys OFFLINE again: {root_keys.role_dir('root')}")
    return 0


def _repo_refresh(args: argparse.Namespace) -> int:
    repo = _repo(args)
    done = repo.refresh(force=args.force)
    print(f"re-signed {', '.join(done)}" if done else "nothing due")
    return 0


def _describe(repo: TufRepository, state: State) -> dict[str, Any]:
    root = state.root.signed
    roles: dict[str, Any] = {}

    def entry(version: int, expires: datetime, keyids: list[str], threshold: int) -> dict[str, Any]:
        return {
            "version": version,
            "expires": _when(expires),
            "threshold": threshold,
            "keyids": list(keyids),
        }

    signed_of: dict[str, Signed] = {
        "root": root,
        "timestamp": state.timestamp.signed,
        "snapshot": state.snapshot.signed,
    }
    signed_of.update((role, md.signed) for role, md in state.targets.items())
    for role in (*layout.TOP_LEVEL, *map(layout.stream_role, state.streams())):
        spec, signed = state.spec(role), signed_of[role]
        roles[role] = entry(signed.version, signed.expires, spec.keyids, spec.threshold)
    return {
        "repository": str(repo.root_dir),
        "root_version": root.version,
        "roles": roles,
        "streams": state.streams(),
    }


def _repo_show(args: argparse.Namespace) -> int:
    repo = _repo(args)
    state = repo.load()
    info = _describe(repo, state)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    now = _when(repo.clock())
    print(f"repository {info['repository']}")
    for role, r in info["roles"].items():
        expired = "  EXPIRED" if r["expires"] <= now else ""
        print(
            f"  {role:<9} version {r['version']:<4} expires {r['expires']}{expired}  "
            f"threshold {r['threshold']}  keys {_short(r['keyids'])}"
        )
    print(f"streams: {', '.join(info['streams']) or 'none yet'}")
    return 0


def _add_repo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser("repo", help="create the signed (TUF) repository and manage its keys")
    rsub = r.add_subparsers(dest="repo_command", required=True)

    def command(name: str, help_text: str, func: Any, *, root_keys: bool | None) -> Any:
        """``root_keys``: True required, False optional, None not taken."""
        p = rsub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("repo_dir", type=Path, metavar="REPO_DIR", help="the repository root")
        p.add_argument(
            "--keys",
            type=Path,
            required=True,
            metavar="DIR",
            help="the publisher's (online) key directory",
        )
        if root_keys is not None:
            p.add_argument(
                "--root-keys",
                type=Path,
                required=root_keys,
                default=None,
                metavar="DIR",
                help="the offline root key directory"
                + ("" if root_keys else " (for root, targets, snapshot and timestamp)"),
            )
        p.set_defaults(func=func)
        return p

    init = command(
        "init",
        "create a repository, its root keys and one online key for each top-level role",
        _repo_init,
        root_keys=True,
    )
    init.add_argument("--root-threshold", type=int, default=1, metavar="N")
    init.add_argument("--root-key-count", type=int, default=1, metavar="N")
    add = command(
        "add-key",
        "add a new key to a role (stream roles: stream-<stream>)",
        _repo_add_key,
        root_keys=False,
    )
    add.add_argument(
        "role", metavar="ROLE", help="root, targets, snapshot, timestamp or stream-<stream>"
    )
    add.add_argument("--threshold", type=int, default=None, metavar="N", help="a new threshold")
    rot = command(
        "rotate",
        "replace the role's keys held here with new ones (old files renamed .revoked)",
        _repo_rotate,
        root_keys=False,
    )
    rot.add_argument(
        "role", metavar="ROLE", help="root, targets, snapshot, timestamp or stream-<stream>"
    )
    rev = command(
        "revoke",
        "remove a key from a role (a leaked or lost key)",
        _repo_revoke,
        root_keys=False,
    )
    rev.add_argument(
        "role", metavar="ROLE", help="root, targets, snapshot, timestamp or stream-<stream>"
    )
    rev.add_argument("keyid", metavar="KEYID", help="the key id, or at least 8 hex digits of it")
    command(
        "resign-root",
        "write a new root version with the same keys and a fresh expiry",
        _repo_resign_root,
        root_keys=True,
    )
    ref = command(
        "refresh",
        "re-sign whatever is due (run from a timer, e.g. hourly)",
        _repo_refresh,
        root_keys=None,
    )
    ref.add_argument("--force", action="store_true", help="re-sign every online role now")
    show = command(
        "show",
        "print each role's version, expiry, threshold and keys",
        _repo_show,
        root_keys=None,
    )
    show.add_argument("--json", action="store_true", help="machine-readable output")


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
    _add_repo_parser(sub)
    statuscli.add_parsers(sub)
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
