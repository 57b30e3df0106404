"""The test plan: layering, validation errors that point at the field, the built-in plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgline.tester.domain.plan import (
    BootPlan,
    PackageRule,
    default_plan,
    load_plan,
    resolve,
)
from imgline.tester.errors import PlanError

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "test-plan.toml"

LAYERED = """
[defaults]
packages = ["systemd", "python3 >= 3.9"]
required_files = ["/etc/os-release"]
forbidden_files = ["/etc/ssh/ssh_host_*_key"]

[defaults.boot]
marker = "Reached target multi-user.target"
timeout_seconds = 300

[streams.stable]
packages = ["openssh-server"]
services = ["ssh"]
[streams.stable.boot]
timeout_seconds = 900

[images.node]
packages = ["python3 >= 3.11", "lvm2"]
image_json = true
[images.node.boot]
marker = "IMGLINE-PAYLOAD-READY"

[images.node.streams.testing]
packages = ["lvm2 >= 2.03"]
forbidden_files = ["/root/.bash_history"]
[images.node.streams.testing.boot]
enabled = false
"""


def test_tables_add_up_from_general_to_specific() -> None:
    plan = load_plan(LAYERED)
    exp = resolve(plan, "node", "stable")
    assert [str(r) for r in exp.packages] == [
        "systemd",
        "python3 >= 3.11",  # the image's own minimum replaces the default one
        "openssh-server",
        "lvm2",
    ]
    assert exp.services == ("ssh.service",)
    assert exp.required_files == ("/etc/os-release",)
    assert exp.boot == BootPlan(marker="IMGLINE-PAYLOAD-READY", timeout_seconds=900, enabled=True)


def test_image_stream_table_is_the_most_specific() -> None:
    exp = resolve(load_plan(LAYERED), "node", "testing")
    assert PackageRule(name="lvm2", min_version="2.03") in exp.packages
    assert exp.forbidden_files == ("/etc/ssh/ssh_host_*_key", "/root/.bash_history")
    assert exp.boot.enabled is False
    assert exp.boot.timeout_seconds == 300  # not set for testing: the default stays
    assert exp.services == ()  # the stable stream's rules do not leak into testing


def test_other_images_get_only_defaults_and_their_stream() -> None:
    exp = resolve(load_plan(LAYERED), "appliance", "stable")
    assert [r.name for r in exp.packages] == ["systemd", "python3", "openssh-server"]
    assert exp.boot.marker == "Reached target multi-user.target"


@pytest.mark.parametrize(
    ("spec", "name", "minimum"),
    [
        ("openssh-server", "openssh-server", None),
        ("python3 >= 3.11", "python3", "3.11"),
        ("linux-image-amd64>=6.1.0-13", "linux-image-amd64", "6.1.0-13"),
        ("kernel-core >= 1:6.5.6-300.fc39", "kernel-core", "1:6.5.6-300.fc39"),
    ],
)
def test_package_rules(spec: str, name: str, minimum: str | None) -> None:
    assert PackageRule.parse(spec) == PackageRule(name=name, min_version=minimum)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[defaults]\npackages = ["python3 > 3"]', "[defaults.packages] Value error, package rule"),
        ('[defaults]\nrequired_files = ["etc/passwd"]', "absolute path"),
        ('[defaults]\nforbidden_files = ["/etc/../root"]', "without '..'"),
        ('[defaults]\nforbidden_files = ["/etc/*/x"]', "last component only"),
        ('[images.node]\nservices = ["ssh service"]', "[images.node.services]"),
        ("[defaults.boot]\ntimeout_seconds = 0", "[defaults.boot.timeout_seconds]"),
        ("[defaults]\npackage = []", "[defaults.package] Extra inputs are not permitted"),
        ("[defaults\n", "not valid TOML"),
    ],
)
def test_bad_plans_name_the_table_and_field(text: str, fragment: str) -> None:
    with pytest.raises(PlanError) as err:
        load_plan(text, "plan.toml")
    assert str(err.value).startswith("plan.toml: ")
    assert fragment in str(err.value)


def test_builtin_plan_is_generic() -> None:
    exp = resolve(default_plan(), "anything", "main")
    assert [r.name for r in exp.packages] == ["systemd"]
    assert "/usr/lib/imgline/image.json" in exp.required_files
    assert exp.image_json and exp.boot.enabled
    assert exp.boot.marker == "Reached target multi-user.target"


def test_example_plan_loads_and_targets_the_node_image() -> None:
    plan = load_plan(EXAMPLE.read_text(encoding="utf-8"), str(EXAMPLE))
    exp = resolve(plan, "node", "stable")
    assert exp.boot.marker == "IMGLINE-PAYLOAD-READY"
    assert {"ssh.service", "node-payload.service"} <= set(exp.services)
    assert "dracut-live" in {r.name for r in exp.packages}
