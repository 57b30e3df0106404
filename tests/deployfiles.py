"""What the tests of deploy/ share: the repository's root, the console scripts the packages
install, and a reader for systemd unit files that keeps repeated keys."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"

#: The services with a configuration of their own, and the console script each one runs.
SERVICES = ("builder", "tester", "publisher", "trigger", "ledger", "updater")


def console_scripts() -> dict[str, str]:
    """Every ``[project.scripts]`` entry of the workspace's packages: name -> package dir."""
    found: dict[str, str] = {}
    for pyproject in [REPO / "core" / "pyproject.toml", *REPO.glob("services/*/pyproject.toml")]:
        project = tomllib.loads(pyproject.read_text())["project"]
        for name in project.get("scripts", {}):
            found[name] = pyproject.parent.relative_to(REPO).as_posix()
    return found


Unit = dict[str, list[tuple[str, str]]]


def read_unit(path: Path) -> Unit:
    """The sections of a unit file, each a list of (key, value) in order: systemd allows a key
    more than once (``LoadCredential=``, ``SystemCallFilter=``), which configparser does not."""
    sections: Unit = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        if current is None or "=" not in line:
            raise ValueError(f"{path}: not a unit file line: {line!r}")
        key, value = line.split("=", 1)
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: Unit, section: str, key: str) -> list[str]:
    """Every value ``key`` has in ``section``, in order."""
    return [v for k, v in unit.get(section, []) if k == key]


def value(unit: Unit, section: str, key: str) -> str | None:
    """The last value of ``key`` (the one systemd uses for single-valued keys)."""
    found = values(unit, section, key)
    return found[-1] if found else None


def config_path(service: str) -> Path:
    return DEPLOY / "config" / f"{service}.toml"


def broker_env(service: str) -> dict[str, str]:
    """The environment a unit gives its service: the broker URL with the password comes from
    ``/etc/imgline/<service>.env``, never from the TOML file."""
    return {"IMGLINE_AMQP_URL": f"amqps://{service}:secret@broker.example.org:5671/imgline"}
