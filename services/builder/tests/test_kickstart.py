"""Kickstart → BuildPlan: mapping, includes, and errors that point at the author's line."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from imgline.builder.domain.plan import Group, Repo, RootFs, RootPassword, Script, SshKey, User
from imgline.builder.errors import KickstartError
from imgline.builder.kickstart import ParsedKickstart, parse_kickstart

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent / "data"
SEED = (DATA / "seed.ks").read_text(encoding="utf-8")
ROOT = "part / --size=1024 --fstype=ext4\n"  # the one line every kickstart needs


def parse(text: str, **kwargs: Any) -> ParsedKickstart:
    return parse_kickstart(text, **kwargs)


def parse_error(text: str, **kwargs: Any) -> KickstartError:
    with pytest.raises(KickstartError) as caught:
        parse_kickstart(text, **kwargs)
    return caught.value


def write(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
    return root


# --- the seed example -------------------------------------------------------------------------


def test_seed_parses_into_the_expected_plan() -> None:
    parsed = parse(SEED, path="seed.ks")
    plan = parsed.plan

    assert plan.lang == "en_US.UTF-8"
    assert plan.keyboard == "us"
    assert (plan.timezone, plan.timezone_utc) == ("Etc/UTC", True)
    assert plan.selinux == "permissive"
    assert plan.root_password == RootPassword(locked=True)
    assert plan.users == (User(name="node", locked=True),)
    assert plan.rootfs == RootFs(size_mib=3072, fstype="ext4", fsoptions="discard")
    assert set(plan.packages) == {"dracut-config-generic", "grub2-efi", "shim", "efibootmgr"}
    assert (plan.excluded_packages, plan.groups, plan.pre, plan.post) == ((), (), (), ())
    assert parsed.warnings == plan.warnings
    assert parsed.sha256 == hashlib.sha256(SEED.encode()).hexdigest()


@pytest.mark.parametrize(
    ("line", "word"),
    [
        ("seed.ks:4:", "auth"),
        ("seed.ks:8:", "firstboot"),
        ("seed.ks:9:", "clearpart"),
        ("seed.ks:10:", "bootloader"),
        ("seed.ks:12:", "poweroff"),
    ],
)
def test_seed_warns_about_what_the_image_ignores(line: str, word: str) -> None:
    warnings = parse(SEED, path="seed.ks").warnings
    assert any(w.startswith(line) and word in w for w in warnings), warnings


@pytest.mark.parametrize("syntax", ["RHEL9", "F39", "DEVEL", "rhel9"])
def test_seed_parses_with_each_syntax_and_auth_is_only_a_warning(syntax: str) -> None:
    parsed = parse(SEED, path="seed.ks", syntax=syntax)
    assert parsed.plan.rootfs.size_mib == 3072
    assert any(w.startswith("seed.ks:4:") and "auth" in w for w in parsed.warnings)


def test_warnings_are_in_kickstart_order() -> None:
    lines = [int(w.split(":")[1]) for w in parse(SEED, path="seed.ks").warnings]
    assert lines == sorted(lines)


# --- mapping, one command at a time -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kickstart", "field", "expected"),
    [
        ("", "lang", "en_US.UTF-8"),
        ("lang de_DE.UTF-8", "lang", "de_DE.UTF-8"),
        ("keyboard de-nodeadkeys", "keyboard", "de-nodeadkeys"),
        ("keyboard --vckeymap=fr --xlayouts=fr,us", "keyboard", "fr"),
        ("keyboard --xlayouts=cz,us", "keyboard", "cz"),
        ("", "timezone", "Etc/UTC"),
        ("timezone Europe/Berlin", "timezone", "Europe/Berlin"),
        ("timezone Europe/Berlin", "timezone_utc", False),
        ("timezone --utc Europe/Berlin", "timezone_utc", True),
        ("timezone --isUtc Europe/Berlin", "timezone_utc", True),
        ("", "root_password", RootPassword(locked=True)),
        ("rootpw --lock", "root_password", RootPassword(locked=True)),
        ("rootpw --plaintext s3cret", "root_password", RootPassword(password="s3cret")),
        ("rootpw s3cret", "root_password", RootPassword(password="s3cret")),
        (
            "rootpw --iscrypted $6$salt$hash",
            "root_password",
            RootPassword(password="$6$salt$hash", crypted=True),
        ),
        (
            "rootpw --iscrypted --lock $6$x",
            "root_password",
            RootPassword(locked=True, password="$6$x", crypted=True),
        ),
        (
            "user --name=ops --password=$6$h --iscrypted --groups=wheel,adm --uid=1500 "
            "--gid=1500 --homedir=/var/home/ops --shell=/bin/bash --gecos='Ops Team'",
            "users",
            (
                User(
                    name="ops",
                    password="$6$h",
                    crypted=True,
                    groups=("wheel", "adm"),
                    uid=1500,
                    gid=1500,
                    homedir="/var/home/ops",
                    shell="/bin/bash",
                    gecos="Ops Team",
                ),
            ),
        ),
        (
            "user --name=a --lock\nuser --name=b --plaintext --password=pw",
            "users",
            (User(name="a", locked=True), User(name="b", password="pw")),
        ),
        ("services --enabled=sshd,chronyd", "services_enabled", ("sshd", "chronyd")),
        ("services --disabled=kdump --enabled=sshd", "services_disabled", ("kdump",)),
        ("", "selinux", None),
        ("selinux --enforcing", "selinux", "enforcing"),
        ("selinux --permissive", "selinux", "permissive"),
        ("selinux --disabled", "selinux", "disabled"),
        ("network --bootproto=dhcp", "hostname", None),
        (
            "network --bootproto=dhcp --device=eth0\nnetwork --hostname=node1.example\n"
            "network --device=eth1 --hostname=other",
            "hostname",
            "node1.example",
        ),
        (
            "url --url=http://deb.debian.org/debian",
            "mirror",
            Repo(name="base", baseurl="http://deb.debian.org/debian", where="kickstart.ks:1"),
        ),
        (
            "repo --name=extra --baseurl=http://r/extra\nrepo --name=more --baseurl=http://r/more",
            "repos",
            (
                Repo(name="extra", baseurl="http://r/extra", where="kickstart.ks:1"),
                Repo(name="more", baseurl="http://r/more", where="kickstart.ks:2"),
            ),
        ),
        (
            "part / --size=2048 --fstype=ext4 --label=root",
            "rootfs",
            RootFs(size_mib=2048, label="root"),
        ),
        ("part / --size=2048", "rootfs", RootFs(size_mib=2048)),
    ],
)
def test_command_maps_to_plan_field(kickstart: str, field: str, expected: object) -> None:
    text = kickstart + "\n" + ("" if "part /" in kickstart else ROOT)
    assert getattr(parse(text).plan, field) == expected


def test_mirror_lists_and_metalinks_are_kept_for_the_backend_with_variables_filled() -> None:
    text = (
        ROOT
        + "url --mirrorlist=https://mirrors.example/mirrorlist?repo=fedora-$releasever&arch=$basearch\n"
        + "repo --name=updates --metalink=https://mirrors.example/metalink?repo=updates-${releasever}\n"
        + "repo --name=local --baseurl=http://r/$basearch/\n"
    )
    plan = parse_kickstart(text, variables={"releasever": "40", "basearch": "x86_64"}).plan
    assert plan.mirror == Repo(
        name="base",
        mirrorlist="https://mirrors.example/mirrorlist?repo=fedora-40&arch=x86_64",
        where="kickstart.ks:2",
    )
    assert plan.repos == (
        Repo(
            name="updates",
            metalink="https://mirrors.example/metalink?repo=updates-40",
            where="kickstart.ks:3",
        ),
        Repo(name="local", baseurl="http://r/x86_64/", where="kickstart.ks:4"),
    )


def test_packages_with_groups_and_exclusions() -> None:
    plan = parse(ROOT + "%packages\n@core\nvim-minimal\n-nano\n# a comment\ncurl\n%end\n").plan
    assert set(plan.packages) == {"vim-minimal", "curl"}
    assert plan.excluded_packages == ("nano",)
    assert plan.groups == ("core",)


def test_post_and_pre_scripts() -> None:
    text = ROOT + (
        "\n"  # line 2
        "%pre\n"  # line 3
        "echo pre\n"
        "%end\n"
        "%post --interpreter=/usr/bin/python3 --nochroot --erroronfail --log=/tmp/post.log\n"
        "import sys\n"
        "print(sys.version)\n"
        "%end\n"
        "%post\n"  # line 10
        "systemctl enable sshd\n"
        "%end\n"
    )
    plan = parse(text).plan
    assert plan.pre == (Script(body="echo pre\n", chroot=False, lineno=3, where="kickstart.ks:3"),)
    assert plan.post == (
        Script(
            body="import sys\nprint(sys.version)\n",
            interpreter="/usr/bin/python3",
            chroot=False,
            error_on_fail=True,
            lineno=6,
            logfile="/tmp/post.log",
            where="kickstart.ks:6",
        ),
        Script(
            body="systemctl enable sshd\n",
            interpreter="/bin/sh",
            chroot=True,
            lineno=10,
            where="kickstart.ks:10",
        ),
    )


@pytest.mark.parametrize(
    ("kickstart", "expected"),
    [
        ("part swap --size=512\n", "kickstart.ks:2: part swap is ignored"),
        ("part /boot --size=512 --fstype=ext4\n", "kickstart.ks:2: part /boot is ignored"),
        ("reboot\n", "kickstart.ks:2: reboot is ignored"),
        ("firewall --enabled --service=ssh\n", "kickstart.ks:2: firewall is ignored"),
        ("method\n", "kickstart.ks:2: Ignoring deprecated command: The method command"),
        ("timezone --isUtc Etc/UTC\n", "kickstart.ks:2: The option --isUtc will be deprecated"),
        ("user --name=a\nuser --name=a\n", "kickstart.ks:3: A user with the name a has already"),
        ("%packages\n@^minimal-environment\n%end\n", "kickstart.ks:2: %packages environment"),
        ("%onerror\necho\n%end\n", "kickstart.ks:2: %onerror is ignored"),
    ],
)
def test_warnings_name_the_line(kickstart: str, expected: str) -> None:
    warnings = parse(ROOT + kickstart).warnings
    assert any(w.startswith(expected) for w in warnings), warnings


@pytest.mark.parametrize(
    ("syntax", "command"),
    [("RHEL9", "install"), ("RHEL9", "upgrade"), ("DEVEL", "install"), ("DEVEL", "authconfig")],
)
def test_removed_harmless_commands_become_warnings(syntax: str, command: str) -> None:
    parsed = parse(ROOT + f"{command}\nlang de_DE.UTF-8\n", syntax=syntax)
    assert parsed.plan.lang == "de_DE.UTF-8"  # the lines after it still count
    assert any(w.startswith("kickstart.ks:2:") and command in w for w in parsed.warnings)


# --- includes ---------------------------------------------------------------------------------


def test_include_from_the_repository(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "common/base.ks": "lang de_DE.UTF-8\n%include common/disk.ks\n",
            "common/disk.ks": ROOT,
            "common/pkgs.ks": "vim\n",
            "ks/node.ks": "",
        },
    )
    text = "%include common/base.ks\n%packages\n%include common/pkgs.ks\ncurl\n%end\n"
    plan = parse(text, path="ks/node.ks", include_root=root).plan
    assert plan.lang == "de_DE.UTF-8"
    assert plan.rootfs.size_mib == 1024
    assert set(plan.packages) == {"vim", "curl"}


def test_include_relative_to_the_including_file(tmp_path: Path) -> None:
    root = write(tmp_path, {"ks/parts/disk.ks": ROOT, "ks/parts/all.ks": "%include disk.ks\n"})
    plan = parse("%include parts/all.ks\n", path="ks/node.ks", include_root=root).plan
    assert plan.rootfs.size_mib == 1024


def test_ksappend_and_include_inside_post(tmp_path: Path) -> None:
    root = write(tmp_path, {"disk.ks": ROOT, "post.sh": "echo included\n"})
    text = "%ksappend disk.ks\n%post\necho one\n%include post.sh\n%end\n"
    plan = parse(text, include_root=root).plan
    assert plan.post[0].body == "echo one\necho included\n"


def test_warning_in_included_file_names_that_file(tmp_path: Path) -> None:
    root = write(tmp_path, {"parts/boot.ks": "# boot\nbootloader --timeout=1\n"})
    warnings = parse(ROOT + "%include parts/boot.ks\n", include_root=root).warnings
    assert any(w.startswith("parts/boot.ks:2: bootloader") for w in warnings), warnings


def test_post_in_included_file_keeps_that_file_line(tmp_path: Path) -> None:
    root = write(tmp_path, {"post.ks": "\n\n%post\ntrue\n%end\n"})
    plan = parse(ROOT + "%include post.ks\n", include_root=root).plan
    assert plan.post[0].lineno == 3


@pytest.mark.parametrize(
    ("main", "files", "where", "message"),
    [
        (
            ROOT + "%include ../outside.ks\n",
            {},
            "kickstart.ks:2",
            "%include ../outside.ks points outside the repository",
        ),
        (
            ROOT + "\n%include /etc/hostname\n",
            {},
            "kickstart.ks:3",
            "%include /etc/hostname points outside the repository",
        ),
        (
            ROOT + "%include sub/../../x.ks\n",
            {},
            "kickstart.ks:2",
            "points outside the repository",
        ),
        (
            ROOT + "%include missing.ks\n",
            {},
            "kickstart.ks:2",
            "%include missing.ks: no such file in the repository",
        ),
        (
            ROOT + "%ksappend missing.ks\n",
            {},
            "kickstart.ks:2",
            "%ksappend missing.ks: no such file in the repository",
        ),
        (
            ROOT + "%include\n",
            {},
            "kickstart.ks:2",
            "%include takes exactly one file name",
        ),
        (
            ROOT + "%include http://example.com/x.ks\n",
            {},
            "kickstart.ks:2",
            "not URLs",
        ),
        (
            ROOT + "%include a.ks\n",
            {"a.ks": "lang C\n%include b.ks\n", "b.ks": "%include a.ks\n"},
            "b.ks:1",
            "%include cycle: kickstart.ks → a.ks → b.ks → a.ks",
        ),
        (
            ROOT + "%include a.ks\n",
            {"a.ks": "lang C\n\n%include gone.ks\n"},
            "a.ks:3",
            "%include gone.ks: no such file",
        ),
        (
            ROOT + "%include a.ks\n",
            {"a.ks": "lang C\nfrobnicate --now\n"},
            "a.ks:2",
            "Unknown command: frobnicate",
        ),
        (
            "%include a.ks\n\nfrobnicate\n",
            {"a.ks": "lang C\n" + ROOT},
            "kickstart.ks:3",
            "Unknown command: frobnicate",
        ),
    ],
)
def test_include_errors_name_file_and_line(
    tmp_path: Path, main: str, files: dict[str, str], where: str, message: str
) -> None:
    root = write(tmp_path / "repo", files)
    (tmp_path / "outside.ks").write_text(ROOT, encoding="utf-8")  # exists, but is not ours
    error = parse_error(main, include_root=root)
    assert f"{error.path}:{error.line}" == where
    assert message in error.detail
    assert str(error).startswith(f"{where}: ")


def test_inline_kickstart_cannot_include() -> None:
    error = parse_error(ROOT + "%include other.ks\n", include_root=None)
    assert error.line == 2
    assert "inline kickstarts cannot %include" in error.detail


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kickstart", "line", "message"),
    [
        ("lang C\n\nfrobnicate yes\n" + ROOT, 3, "Unknown command: frobnicate"),
        ("lang C\nselinux --bogus\n" + ROOT, 2, "unrecognized arguments: --bogus"),
        (ROOT + "part swap --size=abc\n", 2, "argument --size: invalid int value: 'abc'"),
        (ROOT + "lang\n", 2, "the following arguments are required: <lang>"),
        (ROOT + "%wat\n%end\n", 2, "Unknown kickstart section: %wat"),
        (ROOT + "\n%packages\nvim\n", 3, "Section %packages does not end with %end."),
        (ROOT + "%post\ntrue\n%packages\nvim\n%end\n", 2, "Section %post does not end with %end."),
        (ROOT + "%post\ntrue\n%end\n%packages", 5, "Section %packages does not end with %end."),
        (ROOT + "%post --interpreter\ntrue\n%end\n", 2, "argument --interpreter: expected one"),
        (ROOT + 'lang "de_DE\n', 2, "No closing quotation"),
        ("lang C\npart / --size=100 --fstype=xfs\n", 2, "part / --fstype=xfs: images are built"),
        ("lang C\npart / --size=-5 --fstype=ext4\n", 2, "part / --size=-5: the size is a positive"),
        (ROOT + "url --url=http://m/$releasever/\n", 2, "$releasever is used but this builder"),
        (ROOT + "repo --name=x --baseurl=http://m/${releasever}\n", 2, "set releasever in its"),
    ],
)
def test_parse_errors_carry_line_and_message(
    kickstart: str, line: int | None, message: str
) -> None:
    error = parse_error(kickstart, path="ks/node.ks")
    assert error.line == line
    assert error.path == "ks/node.ks"
    assert message in error.detail
    assert "The following problem occurred" not in str(error)
    assert "\n" not in str(error)


@pytest.mark.parametrize(
    ("kickstart", "size", "warning"),
    [
        ("lang C\n", None, "no part /: the image's root is ext4, sized to its content"),
        ("part swap --size=512\n", None, "no part /: the image's root is ext4"),
        ("lang C\npart / --fstype=ext4\n", None, "kickstart.ks:2: part / has no --size"),
        (
            ROOT + "part / --size=5 --fstype=ext4\n",
            5,
            "kickstart.ks:1: part / is replaced by the later one at kickstart.ks:2",
        ),
    ],
)
def test_part_root_may_be_left_out_or_given_again(
    kickstart: str, size: int | None, warning: str
) -> None:
    parsed = parse_kickstart(kickstart, path="kickstart.ks")
    assert parsed.plan.rootfs.size_mib == size
    assert any(w.startswith(warning) for w in parsed.warnings), parsed.warnings


def test_a_variant_resizes_the_base_it_includes(tmp_path: Path) -> None:
    """The shape of real live kickstarts: a base that each variant includes and resizes."""
    (tmp_path / "base.ks").write_text("lang C\npart / --size=3072 --fstype=ext4\n")
    variant = "%include base.ks\npart / --size=6144\n"
    parsed = parse_kickstart(variant, path="variant.ks", include_root=tmp_path)
    assert parsed.plan.rootfs.size_mib == 6144
    assert any(
        w.startswith("base.ks:2: part / is replaced by the later one at variant.ks:2")
        for w in parsed.warnings
    ), parsed.warnings


def test_removed_command_that_matters_stays_an_error() -> None:
    error = parse_error(ROOT + "module --name=nodejs --stream=18\n", syntax="DEVEL")
    assert error.line == 2
    assert "module has been removed" in error.detail


@pytest.mark.parametrize("syntax", ["RHEL99", "fedora", ""])
def test_unknown_syntax_names_the_valid_ones(syntax: str) -> None:
    error = parse_error(SEED, syntax=syntax)
    assert error.line is None
    assert f"unknown kickstart syntax version {syntax!r}" in error.detail
    for known in ("DEVEL", "RHEL9", "F39", "RHEL3-RHEL", "F7-F"):
        assert known in error.detail


def test_parses_in_parallel_threads() -> None:
    texts = [SEED, SEED.replace("--size=3072", "--size=4096")] * 8
    with ThreadPoolExecutor(max_workers=8) as pool:
        plans = list(pool.map(lambda t: parse(t, path="seed.ks"), texts))
    assert [p.plan.rootfs.size_mib for p in plans] == [3072, 4096] * 8
    assert len({p.warnings for p in plans}) == 1


def test_include_through_a_symlink_out_of_the_repository(tmp_path: Path) -> None:
    root = write(tmp_path / "repo", {})
    (tmp_path / "secret.ks").write_text(ROOT, encoding="utf-8")
    (root / "link.ks").symlink_to(tmp_path / "secret.ks")
    error = parse_error("lang C\n%include link.ks\n", include_root=root)
    assert (error.path, error.line) == ("kickstart.ks", 2)
    assert "points outside the repository" in error.detail


@pytest.mark.unit
def test_flat_text_has_includes_expanded(tmp_path: Path) -> None:
    (tmp_path / "pk.ks").write_text("%packages\npython3\n%end\n")
    parsed = parse_kickstart(
        "lang en_US.UTF-8\npart / --size=64 --fstype=ext4\n%include pk.ks\n", include_root=tmp_path
    )
    assert "%include" not in parsed.flat_text
    assert "python3" in parsed.flat_text
    again = parse_kickstart(parsed.flat_text).plan
    # the same plan; only where things were written differs (one file now, not two)
    assert (parsed.plan.packages_where, again.packages_where) == ("pk.ks:1", "kickstart.ks:3")
    assert again.model_copy(update={"packages_where": "pk.ks:1"}) == parsed.plan


def test_groups_ssh_keys_and_kernel_arguments_reach_the_plan() -> None:
    plan = parse(
        ROOT
        + "group --name=ops --gid=1500\n"
        + 'sshkey --username=root "ssh-ed25519 AAAAC3Nza admin@example"\n'
        + 'bootloader --location=none --append="console=ttyS0,115200n8 quiet rd.shell=0"\n'
    ).plan
    assert plan.user_groups == (Group(name="ops", gid=1500),)
    assert plan.ssh_keys == (
        SshKey(user="root", key="ssh-ed25519 AAAAC3Nza admin@example", lineno=3),
    )
    assert plan.kernel_args == ("console=ttyS0,115200n8", "quiet", "rd.shell=0")
    assert not any("sshkey" in w or "group" in w for w in plan.warnings)
    assert any("kickstart.ks:4: bootloader: only --append is used" in w for w in plan.warnings)
    appended_only = parse(ROOT + 'bootloader --append="quiet splash"\n').plan
    assert appended_only.kernel_args == ("quiet", "splash") and appended_only.warnings == ()


@pytest.mark.parametrize(
    ("append", "message"),
    [
        ("quiet 'x'", "holds a character a boot entry cannot carry"),
        ("init=/bin/sh;reboot", "holds a character"),
        ("a=$(id)", "holds a character"),
        ("root=/dev/sda1", "is set by the updater for each layer"),
        ("rd.lvm.lv=vg/other", "is set by the updater"),
    ],
)
def test_kernel_arguments_a_boot_entry_cannot_carry_are_refused(append: str, message: str) -> None:
    error = parse_error(ROOT + f'bootloader --append="{append}"\n')
    assert error.line == 2
    assert message in error.detail


def test_a_node_appliance_kickstart_parses_with_its_warnings() -> None:
    """The shape of oVirt Node's appliance kickstart (data/node-appliance.ks): it used to be
    refused at its first line."""
    parsed = parse_kickstart(
        (DATA / "node-appliance.ks").read_text(),
        path="node-appliance.ks",
        include_root=DATA,
        variables={"releasever": "40", "basearch": "x86_64"},
    )
    plan = parsed.plan
    assert plan.mirror is not None and plan.mirror.mirrorlist == (
        "https://mirrors.example.org/mirrorlist?repo=fedora-40&arch=x86_64"
    )
    assert [r.name for r in plan.repos] == ["updates"]
    assert plan.rootfs.size_mib == 2560
    assert (plan.exclude_docs, plan.ignore_missing, plan.inst_langs) == (True, True, ("en",))
    assert plan.groups == ("core",)
    assert [s.error_on_fail for s in plan.post] == [True, True, True]
    assert plan.post[1].logfile == "/var/log/imgline-post.log"
    assert plan.post[2].interpreter == "/usr/bin/python3"
    assert plan.kernel_args == ("console=ttyS0,115200n8", "rd.shell=0")
    assert parsed.warnings == (
        "node-appliance-base.ks:5: The authconfig command will be deprecated, use authselect "
        "instead.",
        "node-appliance-base.ks:5: auth is ignored: image builds do not use it",
        "node-appliance-base.ks:8: firstboot is ignored: image builds do not use it",
        "node-appliance-base.ks:10: bootloader: only --append is used (the updater installs and "
        "configures the boot loader on each host)",
        "node-appliance-base.ks:15: part / is replaced by the later one at node-appliance.ks:12",
        "node-appliance.ks:12: A partition with the mountpoint / has already been defined.",
    )
    # without a releasever configured, the line that needs it says so
    error = parse_error((DATA / "node-appliance.ks").read_text(), include_root=DATA)
    assert error.line == 6 and "set releasever in its config" in error.detail
