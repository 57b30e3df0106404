"""The imgline Grafana dashboard, made from code with grafanalib: the pipeline (builds, stages,
checks, publishes, dead letters, metadata expiry) and the fleet's convergence.

``python deploy/grafana/dashboard.py`` (``make dashboard``) writes
``deploy/grafana/dashboards/imgline.json``; ``--check`` exits 1 when that file is stale. The
series are those of docs/operations.md, "Metrics".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafanalib._gen import DashboardEncoder
from grafanalib.core import (
    Dashboard,
    GridPos,
    RowPanel,
    Stat,
    Target,
    Template,
    Templating,
    TimeSeries,
)

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "imgline.json"
DATASOURCE = "${datasource}"
WIDTH, HEIGHT = 8, 8  # three panels to a row of Grafana's 24 columns

#: (title, unit, [(expr, legend)]) per panel, in reading order
Panel = tuple[str, str, list[tuple[str, str]]]

PIPELINE: list[Panel] = [
    (
        "Builds by result (per hour)",
        "short",
        [("sum by (result) (increase(imgline_builds_total[1h]))", "{{result}}")],
    ),
    (
        "Build time, p50 and p90",
        "s",
        [
            (
                "histogram_quantile(0.5, sum by (le) (rate(imgline_build_seconds_bucket[1h])))",
                "p50",
            ),
            (
                "histogram_quantile(0.9, sum by (le) (rate(imgline_build_seconds_bucket[1h])))",
                "p90",
            ),
        ],
    ),
    (
        "Time per build stage, p90",
        "s",
        [
            (
                "histogram_quantile(0.9, sum by (le, stage) "
                "(rate(imgline_build_stage_seconds_bucket[1h])))",
                "{{stage}}",
            )
        ],
    ),
    (
        "Images tested by verdict (per hour)",
        "short",
        [("sum by (verdict) (increase(imgline_images_tested_total[1h]))", "{{verdict}}")],
    ),
    (
        "Checks by status (per hour)",
        "short",
        [("sum by (status) (increase(imgline_checks_total[1h]))", "{{status}}")],
    ),
    (
        "Check time, p90",
        "s",
        [
            (
                "histogram_quantile(0.9, sum by (le, check) "
                "(rate(imgline_check_seconds_bucket[1h])))",
                "{{check}}",
            )
        ],
    ),
    (
        "Published and rejected (per hour)",
        "short",
        [
            (
                "sum by (stream) (increase(imgline_images_published_total[1h]))",
                "published {{stream}}",
            ),
            (
                "sum by (stream, reason) (increase(imgline_images_rejected_total[1h]))",
                "rejected {{stream}}: {{reason}}",
            ),
        ],
    ),
    (
        "Dead letters (per hour)",
        "short",
        [
            (
                "sum by (service, topic) (increase(imgline_messages_dead_lettered_total[1h]))",
                "{{service}} {{topic}}",
            )
        ],
    ),
    (
        "Webhooks by result (per hour)",
        "short",
        [("sum by (forge, result) (increase(imgline_webhooks_total[1h]))", "{{forge}} {{result}}")],
    ),
    (
        "Signed metadata: time left",
        "s",
        [("imgline_repository_metadata_expires_timestamp_seconds - time()", "{{role}}")],
    ),
    (
        "Consumers attached to their queues",
        "short",
        [("imgline_consumer_connected", "{{service}} {{instance}}")],
    ),
    (
        "Bus delay before each handler, p90",
        "s",
        [
            (
                "histogram_quantile(0.9, sum by (le, service) "
                "(rate(imgline_message_delay_seconds_bucket[1h])))",
                "{{service}}",
            )
        ],
    ),
    (
        "Messages in hand",
        "short",
        [("sum by (service) (imgline_messages_in_flight)", "{{service}}")],
    ),
]

PIPELINE_STATS: list[Panel] = [
    ("Builds unfinished", "short", [("imgline_builds_unfinished", "")]),
    ("Oldest unfinished build", "s", [("imgline_build_oldest_unfinished_seconds", "")]),
    ("Repository verifies", "bool", [("min(imgline_repository_readable)", "")]),
]

FLEET: list[Panel] = [
    (
        "Hosts by version",
        "short",
        [
            (
                "sum by (name, stream, version) (imgline_fleet_hosts_by_version)",
                "{{name}} {{stream}} {{version}}",
            )
        ],
    ),
    (
        "Converged: hosts on their stream's latest release",
        "percentunit",
        [
            (
                "1 - sum by (name, stream) (imgline_fleet_hosts_outdated) "
                "/ sum by (name, stream) (imgline_fleet_hosts)",
                "{{name}} {{stream}}",
            )
        ],
    ),
    (
        "Hosts outdated",
        "short",
        [("imgline_fleet_hosts_outdated", "{{name}} {{stream}}")],
    ),
    (
        "Upgrades and rollbacks (per hour)",
        "short",
        [
            (
                "sum by (stream, result) (increase(imgline_host_upgrades_total[1h]))",
                "{{stream}} {{result}}",
            )
        ],
    ),
    (
        "Since each host's last check",
        "s",
        [("time() - imgline_host_last_check_timestamp_seconds", "{{instance}}")],
    ),
    (
        "Reports waiting on hosts",
        "short",
        [("imgline_host_reports_pending", "{{instance}}")],
    ),
]


def _targets(queries: list[tuple[str, str]]) -> list[Target]:
    return [
        Target(expr=expr, legendFormat=legend, refId=chr(ord("A") + n), datasource=DATASOURCE)
        for n, (expr, legend) in enumerate(queries)
    ]


def _grid(index: int, top: int, height: int = HEIGHT) -> GridPos:
    return GridPos(h=height, w=WIDTH, x=(index % 3) * WIDTH, y=top + (index // 3) * height)


def _section(
    title: str, panels: list[Panel], stats: list[Panel], top: int
) -> tuple[list[object], int]:
    """A row's title, its stats (short) and its graphs; returns them and the next free line."""
    out: list[object] = [RowPanel(title=title, gridPos=GridPos(h=1, w=24, x=0, y=top))]
    top += 1
    for n, (name, unit, queries) in enumerate(stats):
        out.append(
            Stat(
                title=name,
                dataSource=DATASOURCE,
                targets=_targets(queries),
                format=unit,
                reduceCalc="lastNotNull",
                gridPos=_grid(n, top, height=4),
            )
        )
    top += 4 if stats else 0
    for n, (name, unit, queries) in enumerate(panels):
        out.append(
            TimeSeries(
                title=name,
                dataSource=DATASOURCE,
                targets=_targets(queries),
                unit=unit,
                gridPos=_grid(n, top),
            )
        )
    return out, top + ((len(panels) + 2) // 3) * HEIGHT


def dashboard() -> Dashboard:
    pipeline, top = _section("Pipeline", PIPELINE, PIPELINE_STATS, 0)
    fleet, _ = _section("Fleet", FLEET, [], top)
    return Dashboard(
        title="imgline",
        uid="imgline",
        description="The imgline pipeline and its fleet (docs/operations.md)",
        tags=["imgline"],
        refresh="1m",
        timezone="utc",
        templating=Templating(
            list=[
                Template(
                    name="datasource",
                    label="Prometheus",
                    query="prometheus",
                    type="datasource",
                    default="Prometheus",
                )
            ]
        ),
        panels=[*pipeline, *fleet],
    ).auto_panel_ids()


def render() -> str:
    """The dashboard's JSON as committed: sorted keys, so a diff shows what changed."""
    data = dashboard().to_json_data()
    return json.dumps(data, cls=DashboardEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is stale: run make dashboard", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
