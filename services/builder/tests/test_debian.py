"""BuildPlan → mmdebstrap command line and customize script (level 2: the exact text)."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import pytest

from imgline.builder.adapters import mmdebstrap as mmdebstrap_adapter
from imgline.builder.adapters.mmdebstrap import MmdebstrapBackend
from imgline.builder.adapters.rootcache import RootCache
from imgline.builder.domain import debian
from imgline.builder.domain.plan import BuildPlan, Repo, RootFs, RootPassword, Script, User
from imgline.builder.errors import BackendError
from imgline.core.runner import CommandError

pytestmark = pytest.mark.unit

ROOTFS = RootFs(size_mib=2048)


def plan(**kw: object) -> BuildPlan:
    return BuildPlan(rootfs=ROOTFS, **kw)  # type: ignore[arg-type]


def test_package_root_installs_packages_plus_live_boot_and_syncs_the_cache() -> None:
    cmd = debian.package_root_command(
        plan(
            packages=("linux-image-cloud-amd64", "python3", "exim4"), excluded_packages=("exim4",)
        ),
        suite="bookworm",
        output=Path("/w/packages.tar"),
        hook=Path("/w/exclude.sh"),
        cache_dir=Path("/c/apt"),
        mirror="http://mirror.local/debian",
    )
    assert cmd == [
        "mmdebstrap",
        "--mode=unshare",
        "--variant=minbase",
        "--format=tar",
        '--aptopt=APT::Install-Recommends "false"',
        "--skip=essential/unlink",
        "--skip=output/dev",
        "--include=linux-image-cloud-amd64,python3,dracut,dracut-live",
        '--setup-hook=mkdir -p /c/apt "$1/var/cache/apt/archives/"',
        "--setup-hook=sync-in /c/apt /var/cache/apt/archives/",
        "--customize-hook=/w/exclude.sh",
        "--customize-hook=sync-out /var/cache/apt/archives /c/apt",
        "bookworm",
        "/w/packages.tar",
        "http://mirror.local/debian",
    ]


def test_customize_run_unpacks_the_package_root_and_downloads_nothing() -> None:
    cmd = debian.customize_command(
        suite="bookworm",
        package_root=Path("/w/a b/packages.tar"),
        target=Path("/w/root"),
        hook=Path("/w/customize.sh"),
    )
    assert cmd == [
        "mmdebstrap",
        "--mode=unshare",
        "--variant=custom",
        "--skip=update",
        "--format=directory",
        "--setup-hook=tar-in '/w/a b/packages.tar' /",
        '--setup-hook=mkdir -p "$1/dev"',
        "--customize-hook=/w/customize.sh",
        "bookworm",
        "/w/root",
    ]


def test_package_root_key_follows_the_packages_not_the_scripts() -> None:
    def key(built: BuildPlan, **kw: Any) -> str:
        args: dict[str, Any] = {
            "suite": "bookworm",
            "mirror": None,
            "extra": (),
            "tool": "mmdebstrap 1.3.5",
            "mode": "root",
        }
        return debian.package_root_key(built, **(args | kw))

    base = plan(packages=("python3", "vim"), excluded_packages=("nano",))
    same = {
        key(base),
        key(plan(packages=("vim", "python3"), excluded_packages=("nano",))),  # order
        key(
            base.model_copy(
                update={
                    "post": (Script(body="echo changed\n", lineno=9),),
                    "hostname": "other",
                    "users": (User(name="ops"),),
                    "rootfs": RootFs(size_mib=4096),
                }
            )
        ),
    }
    assert len(same) == 1
    different = [
        key(base, suite="trixie"),
        key(base, mirror="http://m/debian"),
        key(base, extra=("http://r/extra",)),
        key(base, tool="mmdebstrap 1.4.0"),
        key(base, mode="unshare"),
        key(plan(packages=("python3", "vim", "curl"), excluded_packages=("nano",))),
        key(plan(packages=("python3", "vim"))),
        key(base.model_copy(update={"exclude_docs": True})),
        key(base.model_copy(update={"groups": ("core",)})),
        key(base.model_copy(update={"ignore_missing": True})),
        key(base.model_copy(update={"inst_langs": ("en",)})),
    ]
    assert len({*same, *different}) == 1 + len(different)


def test_exclusions_are_purged_from_the_package_root() -> None:
    assert debian.exclusion_script(plan()) is None
    script = debian.exclusion_script(plan(excluded_packages=("exim4-base", "a'b")))
    assert script is not None
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    assert 'chroot "$root" apt-get -y -q purge exim4-base; fi' in script
    assert "purge 'a'\"'\"'b'" in script
    assert "purge" not in debian.customize_script(plan(excluded_packages=("exim4-base",)))


@pytest.mark.parametrize(
    ("packages", "problem"),
    [
        (("Bad_Name",), "'Bad_Name' is not a valid Debian package name"),
        (("ok", "@core"), "'@core' is not a valid Debian package name"),
        (("python3", "libc6:amd64", "foo=1.2-3"), None),
    ],
)
def test_package_names_are_checked(packages: tuple[str, ...], problem: str | None) -> None:
    _, problems = debian.package_list(plan(packages=packages))
    assert problems == ([problem] if problem else [])


def test_customize_script_applies_the_kickstart() -> None:
    script = debian.customize_script(
        plan(
            lang="de_DE.UTF-8",
            keyboard="de",
            timezone="Europe/Berlin",
            hostname="node1",
            root_password=RootPassword(password="$6$salt$hash", crypted=True),
            users=(
                User(name="node", locked=True, groups=("sudo", "adm"), shell="/bin/bash", uid=1500),
                User(name="ops", password="s3cret it's"),
            ),
            services_enabled=("ssh",),
            services_disabled=("getty@tty1",),
            excluded_packages=("exim4-base",),
            mirror=Repo(name="base", baseurl="http://x"),
        )
    )
    for line in [
        'printf "LANG=%s\\n" de_DE.UTF-8 > "$root/etc/default/locale"',
        'printf "XKBLAYOUT=\\"%s\\"\\n" de > "$root/etc/default/keyboard"',
        'ln -sf /usr/share/zoneinfo/Europe/Berlin "$root/etc/localtime"',
        'printf "%s\\n" node1 > "$root/etc/hostname"',
        "chroot \"$root\" usermod --password '$6$salt$hash' root",
        'chroot "$root" useradd --create-home --uid 1500 --shell /bin/bash --groups sudo,adm node',
        'chroot "$root" passwd --lock node >/dev/null',
        'printf "%s\\n" \'ops:s3cret it\'"\'"\'s\' | chroot "$root" chpasswd',
        'chroot "$root" systemctl enable ssh',
        'chroot "$root" systemctl disable getty@tty1',
        '  chroot "$root" dracut --no-hostonly --add dmsquash-live'
        ' --compress "gzip -n -6" --force "/boot/initrd.img-$kver" "$kver"',
    ]:
        assert line in script.splitlines(), line
    assert "passwd --lock root" not in script


def test_post_scripts_keep_interpreter_chroot_and_erroronfail() -> None:
    script = debian.customize_script(
        plan(
            post=(
                Script(
                    body="print('hi')\n",
                    interpreter="/usr/bin/python3",
                    lineno=20,
                    error_on_fail=True,
                ),
                Script(body="cp /etc/hosts $INSTALL_ROOT/etc/\n", chroot=False, lineno=30),
            )
        )
    )
    lines = script.splitlines()
    i = lines.index("# %post from kickstart line 20")
    assert lines[i + 2] == "print('hi')"
    assert (
        lines[i + 5] == 'status=0; chroot "$root" /usr/bin/python3 /tmp/imgline-post-1 || status=$?'
    )
    assert "exit 1" in lines[i + 6]
    assert f"{debian.POST_FAILED} 20 failed" in lines[i + 6]
    j = lines.index("# %post from kickstart line 30")
    assert 'INSTALL_ROOT="$root" /bin/sh "$root/tmp/imgline-post-2"' in lines[j + 5]
    assert "ignored: no --erroronfail" in lines[j + 6]


def test_generated_script_is_valid_bash() -> None:
    script = debian.customize_script(
        plan(
            users=(User(name="a", password="x'y\"z$(rm -rf /)"),),
            post=(Script(body="echo 'unbalanced \" quote'\n", lineno=3),),
        )
    )
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    assert "x'\"'\"'y\"z$(rm -rf /)'" in script  # quoted, never expanded


def test_a_post_log_path_is_never_run_by_the_shell(tmp_path: Path) -> None:
    """``%post --log=`` is the kickstart's text: a path holding ``$(...)`` or quotes names a
    file, it does not run a command on the build host."""
    (tmp_path / "tmp").mkdir()
    evil = f'{tmp_path}/log"$(touch pwned)"`touch pwned2`'
    lines = debian._script_lines(
        "post", 1, Script(body="echo from-post\n", chroot=False, lineno=3, logfile=evil)
    )
    subprocess.run(
        ["bash", "-e", "-c", "\n".join(lines)],
        check=True,
        env={"root": str(tmp_path)},
        cwd=tmp_path,
    )
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    assert Path(evil).read_text() == "from-post\n"
    inside = debian._script_lines("post", 2, Script(body="x\n", lineno=4, logfile="/a b/$(id)"))
    assert any(
        line.startswith("""status=0; chroot "$root" /bin/sh -c 'exec "$1" "$2" >"$3" 2>&1' """)
        and line.endswith(""" /bin/sh /tmp/imgline-post-2 '/a b/$(id)' || status=$?""")
        for line in inside
    ), inside


def test_kickstart_repositories_follow_the_main_mirror(tmp_path: Path) -> None:
    def command(**mirrors: Any) -> list[str]:
        return debian.package_root_command(
            plan(),
            suite="bookworm",
            output=tmp_path,
            cache_dir=tmp_path,
            **mirrors,
        )

    extra = ("http://r/extra",)
    assert command(extra=extra)[-2:] == [debian.DEFAULT_MIRROR, "http://r/extra"]  # kept
    assert command(mirror="http://m/debian", extra=extra)[-2:] == [
        "http://m/debian",
        "http://r/extra",
    ]
    assert command()[-1] == str(tmp_path)  # no mirror given: mmdebstrap's own default


@pytest.mark.parametrize(
    "repo",
    [
        Repo(name="base", mirrorlist="https://m/list", where="node.ks:3"),
        Repo(name="updates", metalink="https://m/metalink", where="node.ks:3"),
    ],
)
def test_mmdebstrap_refuses_mirror_lists_naming_the_line(repo: Repo, tmp_path: Path) -> None:
    backend = MmdebstrapBackend("bookworm", tmp_path, None, 60)
    built = plan(mirror=repo) if repo.name == "base" else plan(repos=(repo,))
    with pytest.raises(BackendError, match=r"^node\.ks:3: the mmdebstrap backend needs") as refused:
        backend.build(built, tmp_path / "ks", tmp_path, io.StringIO())
    assert refused.value.line == 3


def test_excludedocs_and_inst_langs_become_dpkg_path_filters() -> None:
    opts, problems = debian.dpkg_options(plan(exclude_docs=True, inst_langs=("en", "de_DE")))
    assert problems == []
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in opts
    assert "--dpkgopt=path-include=/usr/share/doc/*/copyright" in opts  # Debian policy
    assert "--dpkgopt=path-exclude=/usr/share/locale/*" in opts
    assert "--dpkgopt=path-include=/usr/share/locale/en_*/*" in opts
    assert "--dpkgopt=path-include=/usr/share/locale/de_DE/*" in opts
    assert debian.dpkg_options(plan()) == ([], [])
    cmd = debian.package_root_command(
        plan(exclude_docs=True), suite="s", output=Path("t"), cache_dir=Path("c")
    )
    assert cmd.index("--dpkgopt=path-exclude=/usr/share/man/*") < cmd.index("s")


@pytest.mark.parametrize("lang", ["../../etc", "en/*", "de DE", "*", "en:de", ""])
def test_inst_langs_that_are_not_language_codes_are_refused(lang: str) -> None:
    _, problems = debian.dpkg_options(plan(inst_langs=(lang,)))
    assert problems and "are not language codes" in problems[0]


def test_core_is_debians_important_priority_and_other_groups_are_refused(tmp_path: Path) -> None:
    assert debian.variant(plan()) == "minbase"
    assert debian.variant(plan(groups=("core",))) == "important"
    backend = MmdebstrapBackend("bookworm", tmp_path, None, 60)
    with pytest.raises(BackendError, match=r"^node\.ks:12: %packages @gnome-desktop: no Debian"):
        backend.build(
            plan(groups=("core", "gnome-desktop"), packages_where="node.ks:12"),
            tmp_path / "ks",
            tmp_path,
            io.StringIO(),
        )


class FakeMmdebstrap:
    """Stands in for the runner: records each mmdebstrap run and writes what it would."""

    def __init__(self, missing: dict[str, str] | None = None) -> None:
        self.runs: list[list[str]] = []
        self.missing = missing or {}

    def __call__(self, cmd: list[str], log: object, **kw: object) -> str:
        self.runs.append(cmd)
        if "--format=tar" in cmd:
            include = next(c for c in cmd if c.startswith("--include="))
            for name, said in self.missing.items():
                if name in include.split("=", 1)[1].split(","):
                    raise CommandError("mmdebstrap failed", 1, said)
            Path(cmd[-1] if cmd[-1].endswith(".tar") else cmd[-2]).write_bytes(b"tar")
        else:
            Path(cmd[cmd.index("bookworm") + 1]).mkdir(exist_ok=True)
        return ""

    def kinds(self) -> list[str]:
        return ["packages" if "--format=tar" in c else "customize" for c in self.runs]


def test_ignoremissing_leaves_out_what_apt_cannot_find(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeMmdebstrap(
        {
            "nosuchpkg": "E: Unable to locate package nosuchpkg",
            "gone": "E: Package 'gone' has no installation candidate",
        }
    )
    monkeypatch.setattr(mmdebstrap_adapter, "run", fake)
    backend = MmdebstrapBackend("bookworm", tmp_path / "cache", None, 60, mode="root")
    log = io.StringIO()
    wanted = plan(packages=("vim", "nosuchpkg", "gone"), ignore_missing=True, packages_where="k:9")
    out = backend.build(wanted, tmp_path / "ks", tmp_path, log)
    assert out.tree == tmp_path / "root"
    assert fake.kinds() == ["packages", "packages", "packages", "customize"]
    assert "--include=vim,dracut,dracut-live" in fake.runs[2]
    assert "k:9: %packages --ignoremissing: nosuchpkg is not available" in log.getvalue()
    assert "gone is not available" in log.getvalue()
    with pytest.raises(BackendError, match="not available: Unable to locate package nosuchpkg"):
        backend.build(plan(packages=("nosuchpkg",)), tmp_path / "ks", tmp_path, io.StringIO())


def test_a_build_that_changes_only_scripts_reuses_the_package_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeMmdebstrap()
    monkeypatch.setattr(mmdebstrap_adapter, "run", fake)
    monkeypatch.setattr(MmdebstrapBackend, "tool_version", lambda self: "mmdebstrap 1.3.5")
    roots = RootCache(tmp_path / "roots", max_bytes=1 << 30, max_age_seconds=3600)
    backend = MmdebstrapBackend("bookworm", tmp_path / "cache", None, 60, roots=roots, mode="root")
    first = plan(packages=("vim",), post=(Script(body="echo one\n", lineno=5),))
    second = first.model_copy(update={"post": (Script(body="echo two\n", lineno=5),)})
    for n, built in enumerate((first, second, plan(packages=("vim", "curl")))):
        work = tmp_path / f"w{n}"
        work.mkdir()
        log = io.StringIO()
        backend.build(built, work / "ks", work, log)
        assert not (work / "packages.tar").exists()  # the build's link is gone afterwards
        said = log.getvalue()
        assert ("reused from the cache" in said) == (n == 1), said
    assert fake.kinds() == ["packages", "customize", "customize", "packages", "customize"]
    tar_in = [c for c in fake.runs[2] if c.startswith("--setup-hook=tar-in")]
    assert tar_in == [f"--setup-hook=tar-in {tmp_path}/w1/packages.tar /"]
    assert len(list((tmp_path / "roots").glob("*.tar"))) == 2


def test_a_reused_root_repeats_what_ignoremissing_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeMmdebstrap({"nosuchpkg": "E: Unable to locate package nosuchpkg"})
    monkeypatch.setattr(mmdebstrap_adapter, "run", fake)
    monkeypatch.setattr(MmdebstrapBackend, "tool_version", lambda self: "mmdebstrap 1.3.5")
    roots = RootCache(tmp_path / "roots", max_bytes=1 << 30, max_age_seconds=3600)
    backend = MmdebstrapBackend("bookworm", tmp_path / "cache", None, 60, roots=roots, mode="root")
    wanted = plan(packages=("vim", "nosuchpkg"), ignore_missing=True, packages_where="k:9")
    said = []
    for n in range(2):
        work = tmp_path / f"w{n}"
        work.mkdir()
        log = io.StringIO()
        backend.build(wanted, work / "ks", work, log)
        said.append(log.getvalue())
    assert fake.kinds() == ["packages", "packages", "customize", "customize"]
    warning = "# warning: k:9: %packages --ignoremissing: nosuchpkg is not available"
    assert warning in said[0]
    assert "reused from the cache" in said[1] and warning in said[1]
    roots.evict()  # an evicted or expired root takes its notes with it
    RootCache(tmp_path / "roots", max_bytes=0, max_age_seconds=3600).evict()
    assert list((tmp_path / "roots").glob("*.notes")) == []
