"""Version ordering, checked against results of ``dpkg --compare-versions`` and rpm itself."""

from __future__ import annotations

import re

import pytest

from imgline.tester.domain.versions import VersionError, compare_deb, compare_rpm

pytestmark = pytest.mark.unit

# (a, b, compare(a, b)), each verified with dpkg --compare-versions.
DEB_CASES = [
    ("1.0~rc1", "1.0", -1),
    ("1.0", "1.0+b1", -1),
    ("1:0.9", "2.0", 1),
    ("2.36.1-8+deb12u1", "2.36.1-8", 1),
    ("6.1.0-13", "6.1.0-28", -1),
    ("1.0-1", "1.0-1", 0),
    ("1.0a", "1.0+", -1),
    ("0.0~", "0.0", -1),
    ("3.11.2-1+b1", "3.11.2-1", 1),
    ("1.0~rc1", "1.0~rc2", -1),
    ("1.0~~", "1.0~", -1),
    ("1.0~~a", "1.0~~", 1),
    ("1.0", "1.0-0", 0),
    ("0:1.0", "1.0", 0),
    ("1.01", "1.1", 0),
    ("1.10", "1.9", 1),
    ("1.0", "1.0.0", -1),
    ("1.0", "1.0a", -1),
    ("1.0a", "1.0A", 1),
    ("1.0.", "1.0", 1),
    ("2:1.0", "10:0.1", -1),
    ("1.2-3-4", "1.2-3-5", -1),
    ("1.2-3-4", "1.2-3", 1),
    ("1:2:3", "1:2.3", 1),
    ("3.0.11-1~deb12u2", "3.0.11-1", -1),
    ("3.0.11-1~deb12u2", "3.0.9-1", 1),
    ("252.22-1~deb12u1", "252.17-1~deb12u1", 1),
    ("a1.0", "1.0", 1),
    ("1.0+dfsg-1", "1.0-1", 1),
    ("20230101", "1:0", -1),
]

# Each verified with rpm 4.18 through its dependency matching (python3-rpm, rpm.ds), which is
# what "at least" means to rpm: "1.0-5" satisfies "= 1.0" (rpm.ver alone would order it after).
RPM_CASES = [
    ("1.0~rc1", "1.0", -1),
    ("1.0^git1", "1.0", 1),
    ("1.0^git1", "1.0.1", -1),
    ("1.0^git1", "1.0^git2", -1),
    ("1.0~rc1^git1", "1.0~rc1", 1),
    ("1.0~rc1^git1", "1.0", -1),
    ("1.0^", "1.0", 1),
    ("1.0~~", "1.0~", -1),
    ("1.10", "1.9", 1),
    ("1.0.1", "1.0a", 1),
    ("1.0a", "1.0", 1),
    ("1a", "1.a", 0),
    ("1.0", "1.0.", 0),
    ("1_0", "1.0", 0),
    ("1.001", "1.1", 0),
    ("1.0", "1.0.0", -1),
    ("abc", "abd", -1),
    ("FC5", "fc4", -1),
    ("2.0", "2_0", 0),
    ("1:1.0", "2.0", 1),
    ("0:1.0", "1.0", 0),
    ("1.0-1.fc40", "1.0-2.fc40", -1),
    ("1.0-5", "1.0", 0),
    ("1.0-10.fc40", "1.0-9.fc40", 1),
    ("6.8.9-300.fc40", "6.8.10-200.fc40", -1),
    ("3.2.2-2.el9", "3.2.2-2.el9_4", -1),
    ("1:3.0.7-27.el9", "1:3.0.7-27.el9", 0),
    ("1.2-3-4", "1.2-3-5", -1),
]


def _cases(cases: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """Each case both ways round: compare(a, b) == -compare(b, a)."""
    return [*cases, *((b, a, -expected) for a, b, expected in cases)]


@pytest.mark.parametrize(("a", "b", "expected"), _cases(DEB_CASES))
def test_compare_deb(a: str, b: str, expected: int) -> None:
    assert compare_deb(a, b) == expected


@pytest.mark.parametrize(("a", "b", "expected"), _cases(RPM_CASES))
def test_compare_rpm(a: str, b: str, expected: int) -> None:
    assert compare_rpm(a, b) == expected


@pytest.mark.parametrize("version", ["1.0", "2:1.0-3~bpo12+1", "a1b2", "0.0~"])
def test_compare_deb_is_reflexive(version: str) -> None:
    assert compare_deb(version, version) == 0


@pytest.mark.parametrize(
    ("version", "message"),
    [
        ("", "empty"),
        ("a:1.0", "epoch 'a' is not a number"),
        (":1.0", "epoch '' is not a number"),
        ("-1:1.0", "is not a number"),
        ("99999999999:1.0", "epoch is too big"),
        ("1.0-", "revision after '-' is empty"),
        ("1:", "upstream version is empty"),
        ("-1", "upstream version is empty"),
        ("1:2.0-1:3", "revision '1:3' contains ':'"),
        ("1.0 beta", "'1.0 beta' has characters outside"),
        ("1.0_1", "'1.0_1' has characters outside"),
        ("1.0^1", "'1.0^1' has characters outside"),
        ("1.0é", "has characters outside"),
    ],
)
def test_compare_deb_rejects_invalid(version: str, message: str) -> None:
    with pytest.raises(VersionError, match=re.escape(message)):
        compare_deb(version, "1.0")
    with pytest.raises(VersionError, match=re.escape(message)):
        compare_deb("1.0", version)


@pytest.mark.parametrize(
    ("version", "message"),
    [
        ("", "empty"),
        ("a:1.0", "epoch 'a' is not a number"),
        (":1.0", "epoch '' is not a number"),
        ("1:2:3", "more than one ':'"),
        ("1.0-", "empty version or release"),
        ("-1", "empty version or release"),
        ("1.0 beta", "'1.0 beta' has characters outside"),
        ("1.0/2", "has characters outside"),
        ("1.0é", "has characters outside"),
    ],
)
def test_compare_rpm_rejects_invalid(version: str, message: str) -> None:
    with pytest.raises(VersionError, match=re.escape(message)):
        compare_rpm(version, "1.0")
    with pytest.raises(VersionError, match=re.escape(message)):
        compare_rpm("1.0", version)


def test_version_error_is_a_value_error() -> None:
    assert issubclass(VersionError, ValueError)
