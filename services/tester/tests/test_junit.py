"""The JUnit report: counts, one testcase per check, details and attachments kept."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from imgline.tester.domain.junit import to_junit_xml
from imgline.tester.domain.results import CheckResult, skipped, verdict

pytestmark = pytest.mark.unit


def results() -> list[CheckResult]:
    return [
        CheckResult(name="integrity.sha256", status="passed", duration_seconds=0.5, detail="ab"),
        CheckResult(
            name="content.packages",
            status="failed",
            duration_seconds=0.25,
            detail="lvm2 is not installed\nsecond line",
        ),
        CheckResult(name="content.services", status="error", duration_seconds=0, detail="boom"),
        skipped("boot.live", "boot check disabled by the test plan"),
        CheckResult(
            name="boot.live2",
            status="passed",
            duration_seconds=80,
            attachments=(Path("/x/console.log"),),
        ),
    ]


def test_report_counts_and_cases() -> None:
    xml = to_junit_xml("imgline.node", results(), {"build_id": "abc", "image": "node-1"})
    root = ET.fromstring(xml)  # noqa: S314 - our own output
    suite = root.find("testsuite")
    assert suite is not None
    assert (
        suite.get("tests"),
        suite.get("failures"),
        suite.get("errors"),
        suite.get("skipped"),
    ) == (
        "5",
        "1",
        "1",
        "1",
    )
    assert suite.get("time") == "80.750"
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props == {"build_id": "abc", "image": "node-1"}
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["sha256"].get("classname") == "imgline.node.integrity"
    failure = cases["packages"].find("failure")
    assert failure is not None
    assert failure.get("message") == "lvm2 is not installed"
    assert failure.text == "lvm2 is not installed\nsecond line"
    assert cases["services"].find("error") is not None
    assert cases["live"].find("skipped") is not None
    out = cases["live2"].find("system-out")
    assert out is not None and out.text == "[[ATTACHMENT|console.log]]"


def test_a_check_name_with_dots_of_its_own_stays_whole() -> None:
    """A unit's name has a dot: the group is the first part only."""
    xml = to_junit_xml(
        "imgline.node",
        [CheckResult(name="boot.unit:ssh.service", status="passed", duration_seconds=1)],
        {},
    )
    (case,) = ET.fromstring(xml).iter("testcase")  # noqa: S314 - our own output
    assert (case.get("classname"), case.get("name")) == ("imgline.node.boot", "unit:ssh.service")


def test_verdict_needs_a_check_and_no_failure() -> None:
    assert not verdict([])
    assert not verdict(results())
    assert verdict([r for r in results() if r.status in ("passed", "skipped")])
