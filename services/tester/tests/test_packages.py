"""Reading package databases and matching them against the plan's rules."""

from __future__ import annotations

import pytest

from imgline.tester.domain.packages import parse_dpkg_status, parse_rpm_query, unmet
from imgline.tester.domain.plan import PackageRule

pytestmark = pytest.mark.unit

STATUS = """\
Package: openssh-server
Status: install ok installed
Priority: optional
Architecture: amd64
Version: 1:9.2p1-2+deb12u3
Description: secure shell (SSH) server
 multi-line description
 Version: 99 (a continuation line, not a field)

Package: exim4-base
Status: deinstall ok config-files
Architecture: amd64
Version: 4.96-15

Package: libc6
Status: install ok installed
Architecture: amd64
Version: 2.36-9+deb12u4

Package: libc6
Status: install ok installed
Architecture: i386
Version: 2.36-9+deb12u7

Package: python3
Status: install ok installed
Version: 3.11.2-1+b1
"""


def test_dpkg_status_keeps_only_installed_and_the_highest_arch_version() -> None:
    assert parse_dpkg_status(STATUS) == {
        "openssh-server": "1:9.2p1-2+deb12u3",
        "libc6": "2.36-9+deb12u7",
        "python3": "3.11.2-1+b1",
    }


def test_rules_met_and_unmet_with_reasons() -> None:
    installed = parse_dpkg_status(STATUS)
    rules = [
        PackageRule.parse("openssh-server >= 1:9.0"),
        PackageRule.parse("python3 >= 3.12"),
        PackageRule.parse("lvm2"),
        PackageRule.parse("exim4-base"),  # removed, only its config files are left
        PackageRule.parse("libc6 >= 2.36-9+deb12u5"),
    ]
    assert unmet(rules, installed) == [
        "python3 3.11.2-1+b1 is older than the required 3.12",
        "lvm2 is not installed",
        "exim4-base is not installed",
    ]


def test_uncomparable_version_is_reported_not_raised() -> None:
    problems = unmet([PackageRule.parse("python3 >= 3.11")], {"python3": "!bad!"})
    assert len(problems) == 1
    assert problems[0].startswith("python3: cannot compare !bad! with 3.11")


def test_rpm_query_and_rpm_ordering() -> None:
    text = "kernel-core 0:6.5.6-300.fc39\nkernel-core 0:6.11.4-201.fc40\nbash 0:5.2.26-3.fc40\n"
    installed = parse_rpm_query(text)
    assert installed == {"kernel-core": "0:6.11.4-201.fc40", "bash": "0:5.2.26-3.fc40"}
    rules = [PackageRule.parse("kernel-core >= 6.10"), PackageRule.parse("bash >= 5.3")]
    assert unmet(rules, installed, "rpm") == ["bash 0:5.2.26-3.fc40 is older than the required 5.3"]
