"""deploy/systemd/: a unit per service that runs the service's console script with its
configuration, sandboxed as far as the service allows, with the credentials, directories and
users its configuration and the other deploy files name. systemd itself checks every unit
(``systemd-analyze verify``) and scores its sandbox (``systemd-analyze security``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from deployfiles import (
    DEPLOY,
    REPO,
    Unit,
    broker_env,
    config_path,
    console_scripts,
    read_unit,
    value,
    values,
)

from imgline.core.config import BusSettings, load_settings
from imgline.publisher.settings import PublisherConfig
from imgline.tester.settings import TesterConfig

pytestmark = pytest.mark.unit

SYSTEMD = DEPLOY / "systemd"
#: unit -> (the configuration it reads, the command line it runs)
UNITS = {
    "imgline-builder": ("builder", ["imgline-builder"]),
    "imgline-tester": ("tester", ["imgline-tester"]),
    "imgline-publisher": ("publisher", ["imgline-publisher"]),
    "imgline-repo": ("publisher", ["imgline-publisher", "serve"]),
    "imgline-trigger": ("trigger", ["imgline-trigger"]),
    "imgline-ledger": ("ledger", ["imgline-ledger"]),
    "imgline-updater": ("updater", ["imgline-updater", "run"]),
}
#: The builder needs user namespaces and the setuid newuidmap; the updater is root driving
#: LVM and the boot loader. Their units say why each protection is missing.
PARTLY_SANDBOXED = {"imgline-builder", "imgline-updater"}
SANDBOXED = sorted(set(UNITS) - PARTLY_SANDBOXED)
#: systemd-analyze security's exposure (0 to 10) a sandboxed unit stays under.
MAX_EXPOSURE = 2.0
CREDENTIALS = re.compile(r"^/run/credentials/(?P<unit>[^/]+)\.service/(?P<name>[^/]+)$")


def unit_of(name: str) -> Unit:
    return read_unit(SYSTEMD / f"{name}.service")


def settings_of(service: str) -> BusSettings:
    return load_settings(
        BusSettings, config_path(service), env=broker_env(service), service=service
    )


def credential_names(unit: Unit) -> dict[str, str]:
    """LoadCredential= name -> source file."""
    pairs = (v.split(":", 1) for v in values(unit, "Service", "LoadCredential"))
    return {name: source for name, source in pairs}


def credentials_named_by(service: str) -> dict[str, set[str]]:
    """unit -> the credential names the service's configuration reads."""
    settings = settings_of(service)
    paths = [settings.tls_key, *settings.consumer_config.get("secret_files", {}).values()]
    found: dict[str, set[str]] = {}
    for path in paths:
        m = CREDENTIALS.match(str(path)) if path is not None else None
        if m:
            found.setdefault(m["unit"], set()).add(m["name"])
    return found


def sysusers() -> set[str]:
    lines = (SYSTEMD / "sysusers.d" / "imgline.conf").read_text().splitlines()
    return {ln.split()[1] for ln in lines if ln.strip() and not ln.startswith("#")}


def build_user() -> str:
    made = re.search(
        r"ensure-build-user\.sh\" (\S+)", (REPO / "scripts/ensure-deps.sh").read_text()
    )
    assert made is not None
    return made.group(1)


def test_there_is_a_unit_for_every_service_and_nothing_else() -> None:
    assert {p.stem for p in SYSTEMD.glob("*.service")} == set(UNITS)


@pytest.mark.parametrize("name", sorted(UNITS))
def test_a_unit_runs_its_console_script_with_its_configuration(name: str) -> None:
    unit = unit_of(name)
    service, command = UNITS[name]
    exec_start = value(unit, "Service", "ExecStart")
    assert exec_start is not None
    program, *args = exec_start.split()
    assert program == f"/usr/local/bin/{command[0]}"
    assert command[0] in console_scripts()
    assert args == command[1:]
    assert values(unit, "Service", "Environment") == [f"IMGLINE_CONFIG=/etc/imgline/{service}.toml"]
    assert config_path(service).is_file()
    assert value(unit, "Service", "Restart") == "on-failure"
    assert value(unit, "Install", "WantedBy") == "multi-user.target"


@pytest.mark.parametrize("name", SANDBOXED)
def test_a_sandboxed_unit_has_every_protection(name: str) -> None:
    unit = unit_of(name)
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "CapabilityBoundingSet": "",
        "SystemCallArchitectures": "native",
    }
    for key, wanted in expected.items():
        assert value(unit, "Service", key) == wanted, key
    assert values(unit, "Service", "SystemCallFilter")[0] == "@system-service"
    families = value(unit, "Service", "RestrictAddressFamilies")
    assert families is not None
    assert set(families.split()) <= {"AF_UNIX", "AF_INET", "AF_INET6"}
    # never root: a user of its own, or a throw-away one
    user = value(unit, "Service", "User")
    assert (value(unit, "Service", "DynamicUser") == "yes") != (user is not None)
    assert user is None or user in sysusers()


@pytest.mark.parametrize("name", sorted(PARTLY_SANDBOXED))
def test_a_partly_sandboxed_unit_says_why_in_comments(name: str) -> None:
    text = (SYSTEMD / f"{name}.service").read_text()
    unit = unit_of(name)
    for missing in ("NoNewPrivileges", "ProtectSystem", "CapabilityBoundingSet"):
        if value(unit, "Service", missing) is None:
            assert re.search(rf"^#.*\b{missing}=", text, re.MULTILINE), missing


@pytest.mark.parametrize("name", sorted(UNITS))
def test_a_unit_hands_over_the_credentials_its_configuration_reads(name: str) -> None:
    """A credential the configuration reads but the unit does not load fails at start; one
    the unit loads from a file that is not there keeps the unit from starting at all."""
    unit = unit_of(name)
    service, _ = UNITS[name]
    wanted = credentials_named_by(service).get(name, set())
    loaded = credential_names(unit)
    assert set(loaded) == wanted
    for source in loaded.values():
        assert source.startswith("/etc/imgline/")


def test_a_unit_owns_the_directories_its_configuration_writes() -> None:
    tester = TesterConfig.model_validate(settings_of("tester").consumer_config)
    unit = unit_of("imgline-tester")
    assert f"/var/lib/{value(unit, 'Service', 'StateDirectory')}" == str(tester.work_dir)
    assert value(unit, "Service", "ReadWritePaths") == str(tester.store_dir)

    publisher = PublisherConfig.model_validate(settings_of("publisher").consumer_config)
    unit = unit_of("imgline-publisher")
    state = {f"/var/lib/{d}" for d in (value(unit, "Service", "StateDirectory") or "").split()}
    assert state == {str(publisher.repo_dir), str(publisher.work_dir)}
    assert f"/etc/{value(unit, 'Service', 'ConfigurationDirectory')}" == str(publisher.keys_dir)
    assert value(unit, "Service", "ConfigurationDirectoryMode") == "0700"  # keys refused else
    # the store is the builder's; the publisher only reads it
    assert value(unit, "Service", "ReadWritePaths") is None

    db_path = Path(settings_of("ledger").consumer_config["db_path"])
    unit = unit_of("imgline-ledger")
    assert f"/var/lib/{value(unit, 'Service', 'StateDirectory')}" == str(db_path.parent)


def test_the_store_the_tmpfiles_prepare_is_the_one_the_services_use() -> None:
    lines = (SYSTEMD / "tmpfiles.d" / "imgline.conf").read_text().splitlines()
    entries = {
        parts[1]: parts
        for ln in lines
        if ln.strip() and not ln.startswith("#")
        for parts in [ln.split()]
    }
    for service in ("builder", "tester", "publisher"):
        store = settings_of(service).consumer_config["store_dir"]
        assert store in entries
    store = settings_of("builder").consumer_config["store_dir"]
    assert entries[store][3] == build_user()
    # what the tester writes: its records, and temporary files and locks beside the builder's
    assert entries[f"{store}/tests"][3] == entries[f"{store}/reports"][3] == "imgline-test"
    for shared in ("tmp", ".locks"):
        assert entries[f"{store}/{shared}"][2] == "3775"
        assert entries[f"{store}/{shared}"][4] == build_user()
    tester = unit_of("imgline-tester")
    assert build_user() in (value(tester, "Service", "SupplementaryGroups") or "").split()
    assert value(tester, "Service", "User") == "imgline-test"


def fake_installation(tmp_path: Path) -> tuple[Path, Path]:
    """Copies of the units whose ExecStart names an executable that exists, as systemd-analyze
    wants, and that directory of fake executables."""
    bin_dir, unit_dir = tmp_path / "bin", tmp_path / "units"
    bin_dir.mkdir()
    unit_dir.mkdir()
    for name in console_scripts():
        script = bin_dir / name
        script.write_text("#!/bin/sh\n")
        script.chmod(0o755)
    for unit in SYSTEMD.glob("*.service"):
        text = unit.read_text().replace("/usr/local/bin/", f"{bin_dir}/")
        (unit_dir / unit.name).write_text(text)
    return bin_dir, unit_dir


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    assert found, "systemd-analyze is missing: make deps installs the systemd package"
    return found


def test_systemd_accepts_every_unit_without_a_warning(tmp_path: Path) -> None:
    analyze = systemd_analyze()
    _, unit_dir = fake_installation(tmp_path)
    for unit in sorted(unit_dir.glob("*.service")):
        done = subprocess.run(
            [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, check=False
        )
        assert (done.returncode, done.stdout + done.stderr) == (0, ""), unit.name


@pytest.mark.parametrize("name", SANDBOXED)
def test_systemd_scores_a_sandboxed_unit_as_little_exposed(tmp_path: Path, name: str) -> None:
    analyze = systemd_analyze()
    _, unit_dir = fake_installation(tmp_path)
    done = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(unit_dir / f"{name}.service")],
        capture_output=True,
        text=True,
        check=True,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert m is not None, done.stdout[-500:]
    assert float(m.group(1)) <= MAX_EXPOSURE


def test_sysusers_and_tmpfiles_make_the_store_the_tester_can_write(tmp_path: Path) -> None:
    """The real systemd-sysusers and systemd-tmpfiles on an empty root (chown needs root)."""
    assert os.geteuid() == 0, "chown needs root: make test runs as root"
    assert shutil.which("systemd-tmpfiles"), "make deps installs the systemd package"
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        (root / "etc" / name).touch()
    users = (SYSTEMD / "sysusers.d" / "imgline.conf").read_text()
    users += f'u {build_user()} - "made by scripts/ensure-build-user.sh" /nonexistent\n'
    subprocess.run(["systemd-sysusers", f"--root={root}", "-"], input=users, text=True, check=True)
    subprocess.run(
        ["systemd-tmpfiles", f"--root={root}", "--create", "-"],
        input=(SYSTEMD / "tmpfiles.d" / "imgline.conf").read_text(),
        text=True,
        check=True,
    )
    passwd = (root / "etc/passwd").read_text().splitlines()
    ids = {e.split(":")[0]: int(e.split(":")[2]) for e in passwd}
    store = root / "var/lib/imgline/artifacts"
    assert store.stat().st_uid == ids[build_user()]
    for shared in ("tmp", ".locks"):
        st = (store / shared).stat()
        assert (st.st_mode & 0o7777, st.st_gid) == (0o3775, ids[build_user()])
    for own in ("tests", "reports"):
        assert (store / own).stat().st_uid == ids["imgline-test"]


def test_a_unit_file_is_parsed_as_systemd_reads_it(tmp_path: Path) -> None:
    unit = tmp_path / "x.service"
    unit.write_text(
        "[Service]\n# comment\nLoadCredential=a:/etc/a\nLoadCredential=b:/etc/b\n"
        "ExecStart=/bin/true \\\n  --flag\n"
    )
    parsed = read_unit(unit)
    assert values(parsed, "Service", "LoadCredential") == ["a:/etc/a", "b:/etc/b"]
    assert value(parsed, "Service", "ExecStart") == "/bin/true  --flag"
