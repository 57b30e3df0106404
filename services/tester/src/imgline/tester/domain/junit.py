"""Check results as a JUnit XML report: the format CI servers and dashboards already read.

One ``testsuite`` per image, one ``testcase`` per check; a failed check is a ``failure``, a
check that could not run an ``error``, a skipped one ``skipped``, each with the detail text.
Console logs are named in ``system-out`` as attachments (the Jenkins attachment convention).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence

from imgline.tester.domain.results import CheckResult


def to_junit_xml(suite: str, results: Sequence[CheckResult], properties: Mapping[str, str]) -> str:
    """The report as a string (UTF-8 XML with declaration)."""
    failures = sum(r.status == "failed" for r in results)
    errors = sum(r.status == "error" for r in results)
    skips = sum(r.status == "skipped" for r in results)
    total = sum(r.duration_seconds for r in results)
    root = ET.Element("testsuites", name=suite, tests=str(len(results)))
    ts = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        tests=str(len(results)),
        failures=str(failures),
        errors=str(errors),
        skipped=str(skips),
        time=f"{total:.3f}",
    )
    props = ET.SubElement(ts, "properties")
    for key, value in properties.items():
        ET.SubElement(props, "property", name=key, value=value)
    for r in results:
        # the first part is the group; the rest may hold dots of its own (unit:ssh.service)
        group, _, check = r.name.partition(".") if "." in r.name else ("", "", r.name)
        case = ET.SubElement(
            ts,
            "testcase",
            classname=f"{suite}.{group}" if group else suite,
            name=check,
            time=f"{r.duration_seconds:.3f}",
        )
        if r.status in ("failed", "error"):
            tag = "failure" if r.status == "failed" else "error"
            first = r.detail.splitlines()[0] if r.detail else r.status
            ET.SubElement(case, tag, message=first[:500]).text = r.detail
        elif r.status == "skipped":
            ET.SubElement(case, "skipped", message=r.detail)
        out = [r.detail] if r.status == "passed" and r.detail else []
        out += [f"[[ATTACHMENT|{a.name}]]" for a in r.attachments]
        if out:
            ET.SubElement(case, "system-out").text = "\n".join(out)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
