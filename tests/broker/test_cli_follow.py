"""``imgline build request --follow`` as an operator runs it: the CLI process publishes one
``build.requested`` on a real broker, the ledger service records what the pipeline answers,
and the CLI shows each stage as it happens and exits 0 once the image is published; then
``imgline status`` traces the same build as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bushelpers import service_process

from imgline.core.bus.access import ROLE_BY_USER
from imgline.schemas import payloads as p
from imgline.schemas.messages import ImageBuiltV1, ImagePublishedV1, ImageTestedV1

pytestmark = pytest.mark.broker

KS = "lang en_US.UTF-8\ntimezone --utc Etc/UTC\nrootpw --lock\npart / --size=2048\n"


def test_follow_shows_each_stage_and_status_traces_the_build(amqp_url: str, tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite3"
    kickstart = tmp_path / "node.ks"
    kickstart.write_text(KS)
    with service_process(
        "ledger",
        amqp_url,
        tmp_path,
        consumes=ROLE_BY_USER["ledger"].consumes,
        emits=("build.requested",),
        consumer_config={"db_path": str(db)},
    ) as ledger:
        config = tmp_path / "cli.toml"
        config.write_text(f'amqp_url = "{amqp_url}"\nexchange = "{ledger.exchange}"\n')
        cli = [sys.executable, "-m", "imgline.core.cli"]
        follow = subprocess.Popen(
            [
                *cli,
                "build",
                "request",
                "--name",
                "node",
                "--stream",
                "stable",
                "--kickstart",
                str(kickstart),
                "--config",
                str(config),
                "--follow",
                "--ledger",
                str(db),
                "--timeout",
                "120",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        # the pipeline's part, played here: what the builder, tester and publisher announce
        asked = p.BuildRequested.model_validate(ledger.wait_event(60))
        assert asked.source == p.InlineSource(kickstart=KS)
        assert asked.requested_by is not None and asked.requested_by.endswith("(imgline CLI)")
        sha = "ab" * 32
        built = p.ImageBuilt(
            build_id=asked.build_id,
            request_id=asked.request_id,
            name="node",
            version="20261206.1",
            stream="stable",
            artifact=p.Artifact(uri=f"file:///store/sha256/{sha}", sha256=sha, size=1 << 20),
            kickstart_sha256="cd" * 32,
            backend="mmdebstrap",
            duration_seconds=12.5,
        )
        ledger.publish(ImageBuiltV1.from_payload(built))
        results = [p.TestResult(name="boot.live", status="passed", duration_seconds=40)]
        tested = p.ImageTested(
            build_id=built.build_id, image=built.ref(), passed=True, results=results
        )
        ledger.publish(ImageTestedV1.from_payload(tested))
        published = p.ImagePublished(
            build_id=built.build_id,
            name="node",
            version=built.version,
            stream="stable",
            manifest_url="http://repo/m",
            manifest_sha256=sha,
            image_url="http://repo/i",
            image_sha256=sha,
            image_size=1 << 20,
            key_id="0123456789abcdef",
        )
        ledger.publish(ImagePublishedV1.from_payload(published))
        out, _ = follow.communicate(timeout=120)
        assert follow.returncode == 0, out
        stages = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
        assert [s for s in stages if s != "…"] == ["requested", "built", "tested", "published"]
        assert out.splitlines()[-1].startswith(
            f"build {asked.build_id[:12]}  node 20261206.1 on stable: published after"
        )

        status = subprocess.run(
            [*cli, "status", asked.build_id[:8], "--ledger", str(db), "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
    doc = json.loads(status.stdout)
    assert doc["state"] == "published" and doc["version"] == "20261206.1"
    assert [s["stage"] for s in doc["stages"]] == ["requested", "built", "tested", "published"]
