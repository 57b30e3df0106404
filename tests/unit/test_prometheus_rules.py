"""deploy/prometheus: promtool accepts the scrape config and the alert rules, every alert fires
in its unit test (and stays quiet where it should), and the rules only use series the services
document (docs/operations.md, "Metrics")."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "rules" / "imgline.yml"
OPERATIONS = ROOT / "docs" / "operations.md"


def promtool(*args: str) -> str:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: make deps installs Debian's prometheus package"
    done = subprocess.run(
        [tool, *args], cwd=PROM, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def documented_series() -> set[str]:
    """The series names in the metrics table of docs/operations.md."""
    text = OPERATIONS.read_text(encoding="utf-8")
    return set(re.findall(r"^\| `(imgline_[a-z_]+)`", text, flags=re.MULTILINE))


def test_promtool_checks_the_config_and_the_rules() -> None:
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")
    assert "SUCCESS: 10 rules found" in promtool("check", "rules", "rules/imgline.yml")


def test_every_alert_fires_in_its_unit_test() -> None:
    assert "SUCCESS" in promtool("test", "rules", "tests/imgline.test.yml")
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    tests = yaml.safe_load((PROM / "tests" / "imgline.test.yml").read_text())["tests"]
    fired = {
        case["alertname"]
        for t in tests
        for case in t.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts == fired, f"alerts without a firing test: {sorted(alerts - fired)}"


def test_the_rules_use_only_documented_series() -> None:
    used = set(re.findall(r"\b(imgline_[a-z_]+)", RULES.read_text(encoding="utf-8")))
    families = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in used}
    documented = {re.sub(r"_total$", "", n) for n in documented_series()}
    assert families <= documented, f"undocumented: {sorted(families - documented)}"


def test_the_scrape_config_finds_each_service_on_its_example_port() -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        name = job["job_name"]
        example = tomllib.loads((ROOT / "deploy" / "config" / f"{name}.toml").read_text())
        if name == "updater":  # one target per host, from the inventory
            assert job["file_sd_configs"] == [{"files": ["hosts/*.yml"]}]
            assert example["metrics_port"] == 9415
            continue
        [target] = job["static_configs"][0]["targets"]
        assert target == f"127.0.0.1:{example['metrics_port']}", name
