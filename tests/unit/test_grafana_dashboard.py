"""deploy/grafana: the committed dashboard is what deploy/grafana/dashboard.py makes, its
panels do not overlap, and every query uses series the services document."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "deploy" / "grafana" / "dashboard.py"
COMMITTED = ROOT / "deploy" / "grafana" / "dashboards" / "imgline.json"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("imgline_dashboard", SOURCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def panels() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(COMMITTED.read_text(encoding="utf-8"))["panels"]
    return found


def test_the_committed_dashboard_is_what_the_code_makes() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == generator().render(), (
        "deploy/grafana/dashboards/imgline.json is stale: run make dashboard"
    )


def test_panels_do_not_overlap_and_fit_the_grid() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in panels():
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_every_query_uses_documented_series_through_the_datasource_variable() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `(imgline_[a-z_]+)`", doc, flags=re.MULTILINE))
    queries = [t for p in panels() for t in p.get("targets", [])]
    assert len(queries) >= 20
    for target in queries:
        assert target["datasource"] == "${datasource}"
        for name in re.findall(r"\b(imgline_[a-z_]+)", target["expr"]):
            family = re.sub(r"_(bucket|count|sum)$", "", name)
            assert family in documented, f"{name} in {target['expr']!r} is not documented"
    titles = [p["title"] for p in panels()]
    assert titles.count("Pipeline") == 1 and titles.count("Fleet") == 1
