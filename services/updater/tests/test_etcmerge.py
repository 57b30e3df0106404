"""The three-way /etc merge, planned on Node maps and carried out on real temporary trees."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path

import pytest

from imgline.updater.domain.etcmerge import MergePlan, Node, apply_plan, plan, scan
from imgline.updater.errors import UpdaterError

pytestmark = pytest.mark.unit

# A tree spec: path → file content (str), ("link", target), ("dir", mode) or ("file", text, mode).
Spec = Mapping[str, object]


def build(root: Path, spec: Spec) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, what in sorted(spec.items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(what, str):
            path.write_text(what)
        elif isinstance(what, tuple) and what[0] == "link":
            os.symlink(what[1], path)
        elif isinstance(what, tuple) and what[0] == "dir":
            path.mkdir(exist_ok=True)
            path.chmod(what[1])
        elif isinstance(what, tuple) and what[0] == "file":
            path.write_text(what[1])
            path.chmod(what[2])
        else:
            raise AssertionError(f"bad spec {rel}: {what!r}")
    return root


def merge(tmp_path: Path, base: Spec, admin: Spec, vendor: Spec) -> tuple[MergePlan, Path]:
    """Build the three trees, start the target as a copy of vendor's, plan and apply."""
    b = build(tmp_path / "base", base)
    a = build(tmp_path / "admin", admin)
    v = build(tmp_path / "vendor", vendor)
    target = tmp_path / "target"
    shutil.copytree(v, target, symlinks=True)
    merge_plan = plan(scan(b), scan(a), scan(v))
    apply_plan(merge_plan, a, target)
    return merge_plan, target


def tree(root: Path) -> dict[str, str]:
    """What a tree holds, readably: file text, '-> target' for links, 'dir' for directories."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = path.read_text()
    return out


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# --- scan ---------------------------------------------------------------------------------------


def test_scan_records_files_links_dirs_and_skips_the_rest(tmp_path: Path) -> None:
    outside = build(tmp_path / "outside", {"secret": "s", "d/deep": "x"})
    root = build(
        tmp_path / "etc",
        {
            "hosts": "127.0.0.1 localhost\n",
            "ssh/sshd_config": ("file", "PermitRootLogin no\n", 0o600),
            "localtime": ("link", "../usr/share/zoneinfo/UTC"),
            "escape": ("link", str(outside / "d")),
        },
    )
    os.mkfifo(root / "initctl")
    found = scan(root)
    assert sorted(found) == ["escape", "hosts", "localtime", "ssh", "ssh/sshd_config"]
    assert found["hosts"].kind == "file"
    assert found["ssh"].kind == "dir"
    assert found["ssh"].digest == ""
    assert found["ssh/sshd_config"].mode == 0o600
    assert found["localtime"].kind == "link"
    assert found["escape"].kind == "link"  # not followed into the outside tree
    assert found["hosts"].uid == os.getuid()
    same = build(tmp_path / "same", {"a": "x", "b": ("link", "x")})
    # a file "x" and a link to "x" share the hash of "x" but never compare equal
    assert scan(same)["a"].digest == scan(same)["b"].digest
    assert scan(same)["a"] != scan(same)["b"]


def test_scan_refuses_a_missing_or_linked_root(tmp_path: Path) -> None:
    with pytest.raises(UpdaterError, match="cannot read"):
        scan(tmp_path / "missing")
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(UpdaterError, match="is not a directory"):
        scan(tmp_path / "link")


# --- plan, pure ---------------------------------------------------------------------------------

F = Node("file", "a" * 64, 0o644, 0, 0)
G = Node("file", "b" * 64, 0o644, 0, 0)
H = Node("file", "c" * 64, 0o644, 0, 0)
D = Node("dir", "", 0o755, 0, 0)


@pytest.mark.parametrize(
    ("base", "admin", "vendor", "expected"),
    [
        # untouched by the admin: vendor's wins, its deletions included
        ({"x": F}, {"x": F}, {"x": G}, ((), (), ())),
        ({"x": F}, {"x": F}, {}, ((), (), ())),
        # admin changed it, vendor did not: admin's copied
        ({"x": F}, {"x": G}, {"x": F}, (("x",), (), ())),
        # admin changed it, vendor dropped it: admin's copied
        ({"x": F}, {"x": G}, {}, (("x",), (), ())),
        # admin added it: admin's copied
        ({}, {"x": F}, {}, (("x",), (), ())),
        # admin deleted it, vendor did not touch it: removed
        ({"x": F}, {}, {"x": F}, ((), ("x",), ())),
        # both changed it differently: conflict
        ({"x": F}, {"x": G}, {"x": H}, (("x",), (), ("x",))),
        ({}, {"x": G}, {"x": H}, (("x",), (), ("x",))),  # both added
        # admin deleted it, vendor changed it: conflict, removed (vendor's saved)
        ({"x": F}, {}, {"x": G}, ((), (), ("x",))),
        # admin and vendor agree: nothing
        ({"x": F}, {"x": G}, {"x": G}, ((), (), ())),
        ({"x": F}, {}, {}, ((), (), ())),
        # owner and mode are changes too
        ({"x": F}, {"x": Node("file", F.digest, 0o600, 0, 0)}, {"x": F}, (("x",), (), ())),
        ({"x": F}, {"x": Node("file", F.digest, 0o644, 0, 4)}, {"x": G}, (("x",), (), ("x",))),
        # two directories differing in mode only: the admin's mode wins, nothing to save
        (
            {"d": D},
            {"d": Node("dir", "", 0o700, 0, 0)},
            {"d": Node("dir", "", 0o750, 0, 0)},
            (("d",), (), ()),
        ),
        # admin added a file in a directory the new image dropped: the directory comes along
        ({"d": D, "d/x": F}, {"d": D, "d/x": F, "d/y": G}, {}, (("d", "d/y"), (), ())),
        # ... or that the new image turned into a file: that file is a conflict
        ({"d": D}, {"d": D, "d/y": G}, {"d": F}, (("d", "d/y"), (), ("d",))),
        # admin removed a directory, the new image changed nothing in it: all of it goes
        ({"d": D, "d/x": F}, {}, {"d": D, "d/x": F}, ((), ("d", "d/x"), ())),
        # ... but the new image added to it: the vendor's directory is saved whole
        ({"d": D, "d/x": F}, {}, {"d": D, "d/x": F, "d/n": G}, ((), (), ("d",))),
        # ... or changed a file in it: likewise, the inner conflict goes with the directory
        ({"d": D, "d/x": F}, {}, {"d": D, "d/x": G}, ((), (), ("d",))),
    ],
)
def test_plan_rules(
    base: dict[str, Node],
    admin: dict[str, Node],
    vendor: dict[str, Node],
    expected: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]],
) -> None:
    assert plan(base, admin, vendor) == MergePlan(*expected)


# --- merge on disk ------------------------------------------------------------------------------


def test_admin_edit_is_kept_across_an_update(tmp_path: Path) -> None:
    merge_plan, target = merge(
        tmp_path,
        base={"chrony.conf": "pool a\n", "motd": "hi\n"},
        admin={"chrony.conf": "server ntp.example\n", "motd": "hi\n"},
        vendor={"chrony.conf": "pool a\n", "motd": "hello\n"},
    )
    assert merge_plan == MergePlan(("chrony.conf",), (), ())
    assert tree(target) == {"chrony.conf": "server ntp.example\n", "motd": "hello\n"}


def test_vendor_update_and_vendor_deletion_are_taken(tmp_path: Path) -> None:
    _, target = merge(
        tmp_path,
        base={"a.conf": "1\n", "old.conf": "x\n"},
        admin={"a.conf": "1\n", "old.conf": "x\n"},
        vendor={"a.conf": "2\n", "new.conf": "n\n"},
    )
    assert tree(target) == {"a.conf": "2\n", "new.conf": "n\n"}


def test_conflict_keeps_the_admins_and_saves_the_vendors_as_imgnew(tmp_path: Path) -> None:
    merge_plan, target = merge(
        tmp_path,
        base={"sshd_config": "base\n"},
        admin={"sshd_config": "admin\n"},
        vendor={"sshd_config": "vendor\n"},
    )
    assert merge_plan.conflicts == ("sshd_config",)
    assert tree(target) == {"sshd_config": "admin\n", "sshd_config.imgnew": "vendor\n"}


def test_admin_deletion_is_honoured(tmp_path: Path) -> None:
    _, target = merge(
        tmp_path,
        base={"cron.d/job": "x\n", "cron.d/other": "o\n", "issue": "i\n"},
        admin={"cron.d/other": "o\n", "issue": "i\n"},
        vendor={"cron.d/job": "x\n", "cron.d/other": "o\n", "issue": "i2\n"},
    )
    assert tree(target) == {"cron.d": "dir", "cron.d/other": "o\n", "issue": "i2\n"}


def test_admin_deletion_of_a_file_the_vendor_changed_saves_the_vendors(tmp_path: Path) -> None:
    _, target = merge(
        tmp_path,
        base={"x.conf": "1\n"},
        admin={},
        vendor={"x.conf": "2\n"},
    )
    assert tree(target) == {"x.conf.imgnew": "2\n"}


def test_admin_removed_directory_with_new_vendor_content_is_saved_whole(tmp_path: Path) -> None:
    _, target = merge(
        tmp_path,
        base={"app.d/a": "a\n"},
        admin={},
        vendor={"app.d/a": "a\n", "app.d/b": "b\n"},
    )
    assert tree(target) == {"app.d.imgnew": "dir", "app.d.imgnew/a": "a\n", "app.d.imgnew/b": "b\n"}


def test_symlink_target_change_is_kept(tmp_path: Path) -> None:
    _, target = merge(
        tmp_path,
        base={"localtime": ("link", "../usr/share/zoneinfo/UTC")},
        admin={"localtime": ("link", "../usr/share/zoneinfo/Europe/Paris")},
        vendor={"localtime": ("link", "../usr/share/zoneinfo/UTC")},
    )
    assert tree(target) == {"localtime": "-> ../usr/share/zoneinfo/Europe/Paris"}


def test_mode_change_is_kept_and_mtime_preserved(tmp_path: Path) -> None:
    base = {"shadow-ish": ("file", "s\n", 0o644)}
    admin = {"shadow-ish": ("file", "s\n", 0o600)}
    b = build(tmp_path / "base", base)
    a = build(tmp_path / "admin", admin)
    os.utime(a / "shadow-ish", ns=(1_000_000_000, 1_234_567_890_000_000_000))
    target = build(tmp_path / "target", base)
    merge_plan = plan(scan(b), scan(a), scan(target))
    assert merge_plan == MergePlan(("shadow-ish",), (), ())
    apply_plan(merge_plan, a, target)
    assert mode(target / "shadow-ish") == 0o600
    assert (target / "shadow-ish").read_text() == "s\n"
    assert os.lstat(target / "shadow-ish").st_mtime_ns == 1_234_567_890_000_000_000


def test_added_directory_is_created_with_the_admins_mode(tmp_path: Path) -> None:
    _, target = merge(
        tmp_path,
        base={"hosts": "h\n"},
        admin={"hosts": "h\n", "private": ("dir", 0o700), "private/key": ("file", "k\n", 0o400)},
        vendor={"hosts": "h\n"},
    )
    assert tree(target) == {"hosts": "h\n", "private": "dir", "private/key": "k\n"}
    assert mode(target / "private") == 0o700
    assert mode(target / "private/key") == 0o400


def test_directory_mode_change_is_kept(tmp_path: Path) -> None:
    _, target = merge(
        tmp_path,
        base={"sudoers.d": ("dir", 0o755), "sudoers.d/x": "x\n"},
        admin={"sudoers.d": ("dir", 0o750), "sudoers.d/x": "x\n"},
        vendor={"sudoers.d": ("dir", 0o755), "sudoers.d/x": "x2\n"},
    )
    assert mode(target / "sudoers.d") == 0o750
    assert tree(target) == {"sudoers.d": "dir", "sudoers.d/x": "x2\n"}


def test_file_turned_into_symlink(tmp_path: Path) -> None:
    _, target = merge(
        tmp_path,
        base={"resolv.conf": "nameserver 1.1.1.1\n"},
        admin={"resolv.conf": ("link", "../run/systemd/resolve/stub-resolv.conf")},
        vendor={"resolv.conf": "nameserver 1.1.1.1\n"},
    )
    assert tree(target) == {"resolv.conf": "-> ../run/systemd/resolve/stub-resolv.conf"}


def test_directory_turned_into_symlink_by_the_admin(tmp_path: Path) -> None:
    _, target = merge(
        tmp_path,
        base={"pki/a": "a\n"},
        admin={"pki": ("link", "/srv/pki")},
        vendor={"pki/a": "a\n"},
    )
    assert tree(target) == {"pki": "-> /srv/pki"}


def test_symlink_turned_into_file_both_ways_conflict(tmp_path: Path) -> None:
    _, target = merge(
        tmp_path,
        base={"x": ("link", "y")},
        admin={"x": "admin\n"},
        vendor={"x": ("link", "z")},
    )
    assert tree(target) == {"x": "admin\n", "x.imgnew": "-> z"}


def test_file_kept_in_a_directory_the_vendor_dropped(tmp_path: Path) -> None:
    _, target = merge(
        tmp_path,
        base={"old.d": ("dir", 0o750), "old.d/a": "a\n"},
        admin={"old.d": ("dir", 0o750), "old.d/a": "a\n", "old.d/mine": "m\n"},
        vendor={"other": "o\n"},
    )
    assert tree(target) == {"old.d": "dir", "old.d/mine": "m\n", "other": "o\n"}
    assert mode(target / "old.d") == 0o750


# --- safety -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["../passwd", "a/../../b", "/etc/passwd", "", "a//b", "./a"])
def test_apply_refuses_paths_leaving_the_roots(tmp_path: Path, bad: str) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "t").mkdir()
    with pytest.raises(UpdaterError, match="refusing the path"):
        apply_plan(MergePlan((bad,), (), ()), tmp_path / "a", tmp_path / "t")
    assert list((tmp_path / "t").iterdir()) == []


def test_apply_never_writes_through_a_symlink_in_the_target(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    admin = build(tmp_path / "admin", {"d/x": "evil\n"})
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(outside, target / "d")
    with pytest.raises(UpdaterError, match="refusing to go through"):
        apply_plan(MergePlan(("d/x",), (), ()), admin, target)
    assert list(outside.iterdir()) == []


def test_apply_never_reads_through_a_symlink_in_the_admin_tree(tmp_path: Path) -> None:
    outside = build(tmp_path / "outside", {"x": "secret\n"})
    admin = tmp_path / "admin"
    admin.mkdir()
    os.symlink(outside, admin / "d")
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(UpdaterError, match="refusing to go through"):
        apply_plan(MergePlan(("d/x",), (), ()), admin, target)
    assert list(target.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")
def test_owner_change_is_kept_when_run_as_root(tmp_path: Path) -> None:
    b = build(tmp_path / "base", {"chrony.keys": "k\n", "d": ("dir", 0o750)})
    a = build(tmp_path / "admin", {"chrony.keys": "k\n", "d": ("dir", 0o750), "d/l": ("link", "x")})
    os.chown(a / "chrony.keys", 0, 123)
    os.chown(a / "d", 45, 67)
    os.chown(a / "d/l", 89, 10, follow_symlinks=False)
    target = tmp_path / "target"
    shutil.copytree(b, target, symlinks=True)
    merge_plan = plan(scan(b), scan(a), scan(target))
    assert merge_plan == MergePlan(("chrony.keys", "d", "d/l"), (), ())
    apply_plan(merge_plan, a, target)
    owners = {
        rel: (os.lstat(target / rel).st_uid, os.lstat(target / rel).st_gid)
        for rel in ("chrony.keys", "d", "d/l")
    }
    assert owners == {"chrony.keys": (0, 123), "d": (45, 67), "d/l": (89, 10)}
