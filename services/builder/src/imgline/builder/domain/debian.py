"""BuildPlan → mmdebstrap: the exact command lines and the customize script, as pure text.

A build is two mmdebstrap runs (docs/architecture.md, "Builder"): the package root, named by
:func:`package_root_key` so it can be kept between builds, then everything else the kickstart
asks for, in one generated bash script that the second run executes as a customize hook (root
directory as ``$1``, with /proc, /sys and /dev mounted). Generating it here, not in the
adapter, lets unit tests read every line.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path
from typing import Literal

from imgline.builder.domain.plan import BuildPlan, Script, User

#: How mmdebstrap builds: in a user namespace of an unprivileged build user (scripts run as root
#: there only), or as the host's root.
BuildMode = Literal["unshare", "root"]

#: mmdebstrap's own default, named when a kickstart adds repositories to it.
DEFAULT_MIRROR = "http://deb.debian.org/debian"

#: Always installed: the live image must boot with dracut's dmsquash-live module.
LIVE_PACKAGES = ("dracut", "dracut-live")

#: Marker the customize script prints when a %post fails, so the adapter can name the line.
POST_FAILED = "imgline: %post from kickstart line"

_PKG = re.compile(r"^[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?(=[A-Za-z0-9.+~:-]+)?$")


def package_list(plan: BuildPlan) -> tuple[list[str], list[str]]:
    """(packages to install, problems): kickstart names checked as Debian package names."""
    problems = [
        f"'{p}' is not a valid Debian package name" for p in plan.packages if not _PKG.match(p)
    ]
    wanted = [p for p in plan.packages if p not in plan.excluded_packages]
    for extra in LIVE_PACKAGES:
        if extra not in wanted and extra not in plan.excluded_packages:
            wanted.append(extra)
    return wanted, problems


#: Kickstart groups the mmdebstrap backend can honour: ``@core`` (a minimal usable system) is
#: Debian's "important" priority, which ``--variant=important`` installs.
GROUP_VARIANTS = {"core": "important"}
#: Documentation dpkg leaves out for ``--excludedocs`` (copyright files stay: Debian policy).
DOC_PATHS = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/groff/*")
_LANG = re.compile(
    r"^[A-Za-z]{2,3}(?:_[A-Za-z0-9]{2,8})?(?:\.[A-Za-z0-9-]{1,16})?(?:@[A-Za-z0-9]{1,16})?$"
)


def unsupported_groups(plan: BuildPlan) -> list[str]:
    """The plan's groups that have no Debian equivalent here."""
    return [g for g in plan.groups if g not in GROUP_VARIANTS]


def variant(plan: BuildPlan) -> str:
    """mmdebstrap's variant: minbase, or what a mapped group stands for."""
    return next((GROUP_VARIANTS[g] for g in plan.groups if g in GROUP_VARIANTS), "minbase")


def dpkg_options(plan: BuildPlan) -> tuple[list[str], list[str]]:
    """(mmdebstrap ``--dpkgopt`` arguments, problems) for ``--excludedocs`` and
    ``--inst-langs``: dpkg's path filters keep those files out of the image (and out of later
    installs, as on an anaconda-installed system)."""
    opts: list[str] = []
    problems: list[str] = []
    if plan.exclude_docs:
        opts += [f"--dpkgopt=path-exclude={path}" for path in DOC_PATHS]
        opts.append("--dpkgopt=path-include=/usr/share/doc/*/copyright")
    if plan.inst_langs is not None:
        bad = [lang for lang in plan.inst_langs if not _LANG.match(lang)]
        if bad:
            problems.append(f"--inst-langs: {', '.join(map(repr, bad))} are not language codes")
        else:
            opts.append("--dpkgopt=path-exclude=/usr/share/locale/*")
            opts.append("--dpkgopt=path-include=/usr/share/locale/locale.alias")
            for lang in plan.inst_langs:
                opts.append(f"--dpkgopt=path-include=/usr/share/locale/{lang}/*")
                if "_" not in lang:
                    opts.append(f"--dpkgopt=path-include=/usr/share/locale/{lang}_*/*")
    return opts, problems


#: apt settings of every package root (weak dependencies are never installed).
APT_OPTIONS = ('APT::Install-Recommends "false"',)
#: Bump when what goes into a cached package root changes, so older entries are not reused.
ROOT_FORMAT = 2  # 2: each entry has its notes (packages --ignoremissing left out)


def _mirror_args(mirror: str | None, extra: tuple[str, ...]) -> list[str]:
    """mmdebstrap's mirror arguments: the main mirror (named whenever repositories follow it,
    since mmdebstrap uses its default only when no mirror is given), then ``extra``."""
    return [mirror or DEFAULT_MIRROR, *extra] if (mirror or extra) else []


def package_root_key(
    plan: BuildPlan,
    *,
    suite: str,
    mirror: str | None,
    extra: tuple[str, ...],
    tool: str,
    mode: str,
) -> str:
    """The identity of a build's package root: everything that decides which packages, from
    where, installed how; nothing of the kickstart's configuration or scripts, which are applied
    afterwards. Two plans with the same key get the same root (up to mirror updates, which the
    cache's age limit bounds)."""
    packages, _ = package_list(plan)
    dpkg, _ = dpkg_options(plan)
    identity = {
        "format": ROOT_FORMAT,
        "backend": "mmdebstrap",
        "tool": tool,
        "mode": mode,
        "suite": suite,
        "mirrors": _mirror_args(mirror, extra),
        "variant": variant(plan),
        "packages": sorted(packages),
        "excluded": sorted(plan.excluded_packages),
        "ignore_missing": plan.ignore_missing,
        "dpkg": dpkg,
        "apt": list(APT_OPTIONS),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def package_root_command(
    plan: BuildPlan,
    *,
    suite: str,
    output: Path,
    cache_dir: Path,
    hook: Path | None = None,
    mirror: str | None = None,
    extra: tuple[str, ...] = (),
    mode: BuildMode = "unshare",
) -> list[str]:
    """The first mmdebstrap run: the plan's packages (and nothing of its configuration) into
    the tarball ``output``, with the .deb cache synced in before download and out after install
    (mmdebstrap's documented cache recipe). ``hook`` removes ``%packages`` exclusions.
    ``extra`` are the kickstart's ``repo --baseurl`` mirrors, added after the main one."""
    packages, _ = package_list(plan)
    dpkg, _ = dpkg_options(plan)
    return [
        "mmdebstrap",
        f"--mode={mode}",
        f"--variant={variant(plan)}",
        *dpkg,
        "--format=tar",
        *(f"--aptopt={opt}" for opt in APT_OPTIONS),
        "--skip=essential/unlink",
        "--skip=output/dev",  # device nodes are made by the second run, as the host allows
        f"--include={','.join(packages)}",
        f'--setup-hook=mkdir -p {shlex.quote(str(cache_dir))} "$1/var/cache/apt/archives/"',
        f"--setup-hook=sync-in {shlex.quote(str(cache_dir))} /var/cache/apt/archives/",
        *([f"--customize-hook={hook}"] if hook is not None else []),
        f"--customize-hook=sync-out /var/cache/apt/archives {shlex.quote(str(cache_dir))}",
        suite,
        str(output),
        *_mirror_args(mirror, extra),
    ]


def customize_command(
    *,
    suite: str,
    package_root: Path,
    target: Path,
    hook: Path,
    mirror: str | None = None,
    extra: tuple[str, ...] = (),
    mode: BuildMode = "unshare",
) -> list[str]:
    """The second mmdebstrap run: unpack a package root (fresh or cached) and run the
    customize script on it with /proc, /sys and /dev mounted, into the directory ``target``.
    Nothing is downloaded (``--variant=custom --skip=update``, mmdebstrap's documented way to
    refine a chroot tarball); the mirrors only shape the sources.list the tarball replaces."""
    return [
        "mmdebstrap",
        f"--mode={mode}",
        "--variant=custom",
        "--skip=update",
        "--format=directory",
        f"--setup-hook=tar-in {shlex.quote(str(package_root))} /",
        # the package root has no /dev (--skip=output/dev); unshare mode, which cannot mknod,
        # bind-mounts the host's device nodes onto files in it
        '--setup-hook=mkdir -p "$1/dev"',
        f"--customize-hook={hook}",
        suite,
        str(target),
        *_mirror_args(mirror, extra),
    ]


def exclusion_script(plan: BuildPlan) -> str | None:
    """The hook of the first run that purges ``%packages`` exclusions pulled in as
    dependencies; None when there are none."""
    if not plan.excluded_packages:
        return None
    lines = [
        "#!/bin/bash",
        "# Generated by imgline: %packages exclusions, removed from the package root.",
        "set -euo pipefail",
        'root="$1"',
    ]
    for pkg in plan.excluded_packages:
        lines.append(
            f"if chroot \"$root\" dpkg-query -W -f='${{Status}}' {_q(pkg)} 2>/dev/null "
            f'| grep -q "install ok installed"; then '
            f'chroot "$root" apt-get -y -q purge {_q(pkg)}; fi'
        )
    return "\n".join(lines) + "\n"


def _q(value: str) -> str:
    return shlex.quote(value)


def _user_lines(user: User) -> list[str]:
    args = ["useradd", "--create-home"]
    if user.uid is not None:
        args += ["--uid", str(user.uid)]
    if user.gid is not None:
        args += ["--gid", str(user.gid)]
    if user.homedir:
        args += ["--home-dir", user.homedir]
    if user.shell:
        args += ["--shell", user.shell]
    if user.gecos:
        args += ["--comment", user.gecos]
    if user.groups:
        args += ["--groups", ",".join(user.groups)]
    args.append(user.name)
    lines = [f'chroot "$root" {" ".join(_q(a) for a in args)}']
    lines += _password_lines(user.name, user.password, user.crypted, user.locked)
    return lines


#: Adds ``$3`` to the authorized keys of user ``$2``; ``$1`` is the kickstart line.
_SSHKEY_SH = (
    'home=$(getent passwd "$2" | cut -d: -f6); '
    'if [ -z "$home" ]; then echo "imgline: sshkey at kickstart line $1: the image has no '
    'user $2" >&2; exit 1; fi; '
    'install -d -m 0700 "$home/.ssh"; '
    'printf "%s\\n" "$3" >> "$home/.ssh/authorized_keys"; '
    'chmod 0600 "$home/.ssh/authorized_keys"; '
    'chown -R "$2": "$home/.ssh"'
)


def _password_lines(name: str, password: str | None, crypted: bool, locked: bool) -> list[str]:
    lines = []
    if password is not None and crypted:
        lines.append(f'chroot "$root" usermod --password {_q(password)} {_q(name)}')
    elif password is not None:
        lines.append(f'printf "%s\\n" {_q(f"{name}:{password}")} | chroot "$root" chpasswd')
    if locked:
        lines.append(f'chroot "$root" passwd --lock {_q(name)} >/dev/null')
    return lines


#: Runs ``$1 $2`` with its output in ``$3``, all resolved inside the image's root.
_LOGGED = 'exec "$1" "$2" >"$3" 2>&1'


def _script_lines(kind: str, index: int, script: Script) -> list[str]:
    tag = hashlib.sha256(script.body.encode()).hexdigest()[:12]
    delim = f"IMGLINE_{kind.upper()}_{index}_{tag}"
    inside = f"/tmp/imgline-{kind}-{index}"  # noqa: S108 - inside the image root, not the host
    lines = [
        f"# %{kind} from kickstart line {script.lineno}",
        f"cat > \"$root{inside}\" <<'{delim}'",
        script.body.rstrip("\n"),
        delim,
        f'chmod 0700 "$root{inside}"',
    ]
    if script.chroot and script.logfile:
        # The log is opened inside the image: a path through a symlink an earlier %post made
        # (/var/log -> /etc) must not reach the build host's files.
        run = (
            f'chroot "$root" /bin/sh -c {_q(_LOGGED)} post-log '
            f"{_q(script.interpreter)} {inside} {_q(script.logfile)}"
        )
    elif script.chroot:
        run = f'chroot "$root" {_q(script.interpreter)} {inside}'
    else:
        env = 'ANA_INSTALL_PATH="$root" INSTALL_ROOT="$root"'
        run = f'{env} {_q(script.interpreter)} "$root{inside}"'
        if script.logfile:  # a host script logs on the host; quoted, it never runs "$(...)"
            run += f" >{_q(script.logfile)} 2>&1"
    failure = f"{POST_FAILED} {script.lineno} failed with status $status"
    if script.error_on_fail:
        lines.append(f"status=0; {run} || status=$?")
        lines.append(f'if [ "$status" -ne 0 ]; then echo "{failure}" >&2; exit 1; fi')
    else:
        lines.append(f"status=0; {run} || status=$?")
        lines.append(
            f'if [ "$status" -ne 0 ]; then echo "{failure} (ignored: no --erroronfail)" >&2; fi'
        )
    lines.append(f'rm -f "$root{inside}"')
    return lines


def customize_script(plan: BuildPlan) -> str:
    """The bash script that turns an installed package set into the kickstart's system."""
    tz = plan.timezone
    lines = [
        "#!/bin/bash",
        "# Generated by imgline from the kickstart; run by mmdebstrap as a customize hook.",
        "set -euo pipefail",
        'root="$1"',
        'fail() { echo "imgline: $*" >&2; exit 1; }',
        "",
        "# lang",
        f'printf "LANG=%s\\n" {_q(plan.lang)} > "$root/etc/default/locale"',
        'if [ -x "$root/usr/sbin/locale-gen" ]; then',
        f'  printf "%s UTF-8\\n" {_q(plan.lang)} >> "$root/etc/locale.gen"',
        '  chroot "$root" locale-gen',
        "fi",
        "# keyboard",
        f'printf "XKBLAYOUT=\\"%s\\"\\n" {_q(plan.keyboard)} > "$root/etc/default/keyboard"',
        "# timezone",
        f'[ -e "$root/usr/share/zoneinfo/"{_q(tz)} ] '
        f"|| fail {_q(f'timezone {tz} is not in the image: add tzdata to %packages')}",
        f'ln -sf /usr/share/zoneinfo/{_q(tz)} "$root/etc/localtime"',
        f'printf "%s\\n" {_q(tz)} > "$root/etc/timezone"',
    ]
    if plan.hostname:
        lines += ["# hostname", f'printf "%s\\n" {_q(plan.hostname)} > "$root/etc/hostname"']
    rp = plan.root_password
    lines += ["# rootpw", *_password_lines("root", rp.password, rp.crypted, rp.locked)]
    if plan.user_groups:
        lines.append("# groups")
        for group in plan.user_groups:
            gid = f"--gid {group.gid} " if group.gid is not None else ""
            lines.append(f'chroot "$root" groupadd {gid}{_q(group.name)}')
    if plan.users:
        lines.append("# users")
        for user in plan.users:
            lines += _user_lines(user)
    if plan.ssh_keys:
        lines.append("# sshkey: resolved inside the image, so its paths cannot reach the host")
        for sk in plan.ssh_keys:
            args = f"{sk.lineno} {_q(sk.user)} {_q(sk.key)}"
            lines.append(f'chroot "$root" /bin/sh -eu -c {_q(_SSHKEY_SH)} sshkey {args}')
    if plan.services_enabled or plan.services_disabled:
        lines += [
            "# services",
            '[ -x "$root/usr/bin/systemctl" ] || fail "services needs systemd in %packages"',
        ]
        lines += [f'chroot "$root" systemctl enable {_q(s)}' for s in plan.services_enabled]
        lines += [f'chroot "$root" systemctl disable {_q(s)}' for s in plan.services_disabled]
    for i, script in enumerate(plan.post, start=1):
        lines += _script_lines("post", i, script)
    lines += [
        "# initramfs that boots the image live (dracut dmsquash-live)",
        'kvers=$(ls "$root/lib/modules" 2>/dev/null || true)',
        '[ -n "$kvers" ] || fail "the image has no kernel: add one (e.g. linux-image-cloud-amd64)'
        ' to %packages"',
        "for kver in $kvers; do",
        # gzip -6, not dracut's -9: 7 s instead of 28 s here, for an initramfs 0.1 % larger
        '  chroot "$root" dracut --no-hostonly --add dmsquash-live'
        ' --compress "gzip -n -6" --force "/boot/initrd.img-$kver" "$kver"',
        "done",
        "",
    ]
    return "\n".join(lines)
