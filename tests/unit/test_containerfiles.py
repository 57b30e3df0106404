"""deploy/containers/: a Containerfile per service, checked without a container runtime (none
can pull base images here): pinned bases, sources that exist, the service's console script as
the entrypoint, a non-root user, and the system packages its tools come from."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from deployfiles import DEPLOY, REPO, console_scripts

pytestmark = pytest.mark.unit

CONTAINERS = DEPLOY / "containers"
#: The services that run in a container. The updater is not one of them: it changes the
#: disks and the boot loader of the host it runs on.
IMAGES = ("builder", "tester", "publisher", "trigger", "ledger")
#: System packages a service's tools come from (scripts/ensure-deps.sh installs the same).
TOOLS = {
    "builder": {"mmdebstrap", "uidmap", "squashfs-tools", "e2fsprogs", "git"},
    "tester": {"qemu-system-x86", "squashfs-tools", "e2fsprogs", "rpm"},
}
BASE = "debian:bookworm-slim"

Instruction = tuple[str, str]


def instructions(path: Path) -> list[Instruction]:
    """(keyword, arguments) of each instruction, continuation lines joined, comments dropped."""
    out: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        line = pending + line
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def stages(found: list[Instruction]) -> list[list[Instruction]]:
    out: list[list[Instruction]] = []
    for instruction in found:
        if instruction[0] == "FROM":
            out.append([])
        out[-1].append(instruction)
    return out


def image_ref_is_pinned(ref: str) -> bool:
    name = ref.rsplit("/", 1)[-1]
    if "@sha256:" in name:
        return True
    return ":" in name and not name.endswith(":latest")


def debian_packages() -> set[str]:
    text = (REPO / "scripts" / "ensure-deps.sh").read_text()
    m = re.search(r"^DEBIAN_PACKAGES=\((.*)\)$", text, re.MULTILINE)
    assert m is not None
    return set(m.group(1).split())


def test_there_is_a_containerfile_per_service() -> None:
    assert {p.name.removesuffix(".Containerfile") for p in CONTAINERS.glob("*.Containerfile")} == (
        set(IMAGES)
    )


@pytest.mark.parametrize("service", IMAGES)
def test_a_containerfile_builds_from_pinned_images_and_sources_that_exist(service: str) -> None:
    found = instructions(CONTAINERS / f"{service}.Containerfile")
    names = set()
    for stage in stages(found):
        words = stage[0][1].split()
        assert image_ref_is_pinned(words[0]), words[0]
        assert words[0] == BASE
        if len(words) == 3 and words[1].upper() == "AS":
            names.add(words[2])
    for keyword, args in found:
        assert keyword != "ADD", "COPY, not ADD: nothing fetched or unpacked behind our back"
        if keyword != "COPY":
            continue
        words = args.split()
        source_of = [w for w in words if w.startswith("--from=")]
        operands = [w for w in words if not w.startswith("--")]
        if source_of:
            origin = source_of[0].removeprefix("--from=")
            assert origin in names or image_ref_is_pinned(origin), origin
            continue
        for source in operands[:-1]:
            assert (REPO / source).exists(), f"{service}: COPY {source} is not in the repository"


@pytest.mark.parametrize("service", IMAGES)
def test_a_containerfile_runs_the_services_console_script_as_a_user(service: str) -> None:
    final = stages(instructions(CONTAINERS / f"{service}.Containerfile"))[-1]
    entrypoint = [json.loads(args) for keyword, args in final if keyword == "ENTRYPOINT"]
    assert entrypoint == [[f"imgline-{service}"]]
    scripts = console_scripts()
    assert scripts[f"imgline-{service}"] == f"services/{service}"
    users = [args for keyword, args in final if keyword == "USER"]
    assert len(users) == 1
    assert users[0] not in ("root", "0")
    assert users[0] in (CONTAINERS / "accounts.sh").read_text()
    env = " ".join(args for keyword, args in final if keyword == "ENV")
    assert f"IMGLINE_CONFIG=/etc/imgline/{service}.toml" in env.split()


@pytest.mark.parametrize("service", IMAGES)
def test_a_containerfile_installs_its_package_and_its_tools(service: str) -> None:
    found = instructions(CONTAINERS / f"{service}.Containerfile")
    runs = [args for keyword, args in found if keyword == "RUN"]
    syncs = [r for r in runs if r.startswith("uv sync")]
    assert syncs == [f"uv sync --frozen --no-dev --no-editable --package imgline-{service}"]
    installed: set[str] = set()
    for run in runs:
        for command in run.split("&&"):
            words = command.split()
            if words[:3] == ["apt-get", "install", "-y"]:
                assert "--no-install-recommends" in words
                installed |= {w for w in words[3:] if not w.startswith("-")}
    assert "python3" in installed
    wanted = TOOLS.get(service, set())
    assert wanted <= installed
    assert wanted <= debian_packages()


def test_the_context_leaves_out_caches_and_secrets() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    for path in (".venv", ".cache", ".git", "deploy/tls", "deploy/secrets"):
        assert path in ignored


def test_the_accounts_script_makes_the_stores_directories_as_tmpfiles_does(
    tmp_path: Path,
) -> None:
    """accounts.sh with fake groupadd/useradd/usermod/install on PATH: the commands it runs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "log"
    for tool in ("groupadd", "useradd", "usermod", "install"):
        fake = bin_dir / tool
        fake.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\n')
        fake.chmod(0o755)
    tmpfiles = DEPLOY / "systemd" / "tmpfiles.d" / "imgline.conf"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    subprocess.run(["sh", str(CONTAINERS / "accounts.sh"), str(tmpfiles)], env=env, check=True)
    commands = log.read_text().splitlines()
    made = [c for c in commands if c.startswith("install ")]
    assert (
        "install -d -m 3775 -o imgline-build -g imgline-build /var/lib/imgline/artifacts/tmp"
        in made
    )
    assert (
        "install -d -m 0755 -o imgline-test -g imgline-test /var/lib/imgline/artifacts/tests"
        in made
    )
    assert "usermod --append --groups imgline-build imgline-test" in commands
    uids = [
        words[words.index("--uid") + 1]
        for words in (c.split() for c in commands)
        if words[0] == "useradd"
    ]
    assert len(uids) == len(set(uids)) == 5
