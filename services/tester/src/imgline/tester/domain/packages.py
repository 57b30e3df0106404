"""Which packages an image has, read from its own package database, against the plan's rules.

Debian images are read from ``/var/lib/dpkg/status`` (a text file, parsed here), RPM images
from ``rpm -qa`` against the image's database (the adapter runs it). Only *installed* packages
count: dpkg keeps removed-but-not-purged ones in the status file too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from imgline.tester.domain.plan import PackageRule
from imgline.tester.domain.versions import VersionError, compare_deb, compare_rpm

Compare = Callable[[str, str], int]
COMPARERS: dict[str, Compare] = {"dpkg": compare_deb, "rpm": compare_rpm}


def parse_dpkg_status(text: str) -> dict[str, str]:
    """Installed packages (name → version) from a dpkg status file.

    Multi-arch packages appear once per architecture with the same name; the highest version
    is kept (a rule is about the package, not one architecture of it).
    """
    installed: dict[str, str] = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if not line or line[0] in " \t":
                continue  # continuation lines of long fields (Description, Conffiles)
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        name, version = fields.get("Package"), fields.get("Version")
        if not name or not version:
            continue
        if fields.get("Status", "").split()[-1:] != ["installed"]:
            continue
        old = installed.get(name)
        if old is None or compare_deb(version, old) > 0:
            installed[name] = version
    return installed


def parse_rpm_query(text: str) -> dict[str, str]:
    """Installed packages from ``rpm -qa --qf '%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE}\\n'``."""
    installed: dict[str, str] = {}
    for line in text.splitlines():
        name, _, evr = line.strip().partition(" ")
        if not name or not evr:
            continue
        old = installed.get(name)
        if old is None or compare_rpm(evr, old) > 0:
            installed[name] = evr
    return installed


def unmet(
    rules: Iterable[PackageRule], installed: Mapping[str, str], kind: str = "dpkg"
) -> list[str]:
    """One sentence per rule the image does not meet; empty when all are met."""
    compare = COMPARERS[kind]
    problems: list[str] = []
    for rule in rules:
        have = installed.get(rule.name)
        if have is None:
            problems.append(f"{rule.name} is not installed")
            continue
        if rule.min_version is None:
            continue
        try:
            too_old = compare(have, rule.min_version) < 0
        except VersionError as exc:
            problems.append(f"{rule.name}: cannot compare {have} with {rule.min_version}: {exc}")
            continue
        if too_old:
            problems.append(f"{rule.name} {have} is older than the required {rule.min_version}")
    return problems
