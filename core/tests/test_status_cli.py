"""``imgline status`` and ``imgline build request --follow`` against a real ledger file."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from ledgerstory import built, published, requested, rolled_back, upgraded, verdict

from imgline.core import cli, statuscli
from imgline.core.ledger.events import of_payload
from imgline.core.ledger.store import Ledger
from imgline.schemas import payloads as p

pytestmark = pytest.mark.unit


def pipeline(path: Path) -> tuple[Ledger, list[p.Payload]]:
    r = requested()
    b = built(r, "2", 100)
    return Ledger(path), [r, b, verdict(b, 160), published(b, 161)]


def test_status_traces_one_build_to_its_hosts_in_text_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger, steps = pipeline(tmp_path / "l.sqlite3")
    b = steps[1]
    assert isinstance(b, p.ImageBuilt)
    for n, step in enumerate([*steps, upgraded("a", b, "1", 300), rolled_back("b", b, "1", 400)]):
        ledger.record(of_payload(str(n), step))
    db = str(ledger.path)
    assert cli.main(["status", b.build_id[:10], "--ledger", db]) == 0
    text = capsys.readouterr().out
    assert "node 2 on main: published" in text
    assert "built      2026-12-06 06:01:40Z  +1m40s" in text
    assert "1 rolled back, 1 upgraded" in text
    assert cli.main(["status", b.build_id, "--ledger", db, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["state"] == "published" and len(doc["hosts"]) == 2
    assert cli.main(["status", "--ledger", db, "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["fleet"][0]["outdated"] == 1 and listing["builds"][0]["version"] == "2"
    assert cli.main(["status", "--ledger", db]) == 0
    assert "node on main: latest 2, 2 host(s), 1 outdated (1: 1, 2: 1)" in capsys.readouterr().out


def test_status_names_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ledger, steps = pipeline(tmp_path / "l.sqlite3")
    ledger.record(of_payload("r", steps[0]))
    db = str(ledger.path)
    assert cli.main(["status", "ffff", "--ledger", db]) == 2
    assert "no build ffff in the ledger" in capsys.readouterr().err
    assert cli.main(["status", "'; DROP TABLE events", "--ledger", db]) == 2
    assert "is not a build id" in capsys.readouterr().err
    assert cli.main(["status", "--ledger", str(tmp_path / "nope")]) == 2
    assert "no ledger at" in capsys.readouterr().err
    assert cli.main(["status"]) == 2
    assert "pass --ledger or set IMGLINE_LEDGER" in capsys.readouterr().err


class Pipeline:
    """Plays the services: each poll of ``follow`` lets the next event happen."""

    def __init__(self, ledger: Ledger, steps: list[p.Payload]) -> None:
        self.ledger, self.steps, self.now = ledger, list(steps), 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        if self.steps and self.now % 20 == 0:
            step = self.steps.pop(0)
            self.ledger.record(of_payload(f"e{len(self.steps)}", step))


def test_follow_prints_each_stage_as_it_happens_and_ends_with_the_result(tmp_path: Path) -> None:
    ledger, steps = pipeline(tmp_path / "l.sqlite3")
    play = Pipeline(ledger, steps)
    out = io.StringIO()
    code, final = statuscli.follow(
        ledger, steps[0].build_id, 3600, out, clock=play.clock, sleep=play.sleep, heartbeat=15
    )
    assert code == statuscli.EXIT_PUBLISHED and final.state == "published"
    lines = out.getvalue().splitlines()
    assert [line.split()[0] for line in lines if not line.startswith("  …")][:4] == [
        "requested",
        "built",
        "tested",
        "published",
    ]
    assert any(line.startswith("  … building") for line in lines)  # the wait is visible
    assert lines[-1].endswith("published after 1m20s")


def test_follow_stops_at_a_failure_and_at_the_timeout(tmp_path: Path) -> None:
    ledger, steps = pipeline(tmp_path / "l.sqlite3")
    r = steps[0]
    assert isinstance(r, p.BuildRequested)
    failed = p.BuildFailed(
        request_id=r.request_id, build_id=r.build_id, name="node", stage="build", error="boom"
    )
    play = Pipeline(ledger, [r, failed])
    code, final = statuscli.follow(
        ledger, r.build_id, 3600, io.StringIO(), clock=play.clock, sleep=play.sleep
    )
    assert (code, final.state) == (statuscli.EXIT_NOT_PUBLISHED, "failed")
    other = Ledger(tmp_path / "other.sqlite3")
    play = Pipeline(other, [])
    out = io.StringIO()
    code, _ = statuscli.follow(other, r.build_id, 60, out, clock=play.clock, sleep=play.sleep)
    assert code == statuscli.EXIT_TIMEOUT and "still going after" in out.getvalue()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--name", "node"], "give --kickstart FILE, or --git URL"),
        (["--name", "node", "--git", "https://x/y.git"], "with --path"),
        (["--name", "../etc", "--git", "u", "--path", "k"], "the request is not valid"),
        (["--name", "node", "--git", "u", "--path", "k", "--commit=--upload-pack=x"], "valid"),
        (["--name", "node", "--kickstart", "/nonexistent/ks"], "cannot read it"),
    ],
)
def test_a_bad_request_is_refused_before_anything_is_sent(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("IMGLINE_AMQP_URL", raising=False)
    monkeypatch.delenv("IMGLINE_CONFIG", raising=False)
    assert cli.main(["build", "request", *argv]) == 2
    assert message in capsys.readouterr().err


def test_status_follow_takes_the_next_request_not_an_earlier_one(tmp_path: Path) -> None:
    ledger, steps = pipeline(tmp_path / "l.sqlite3")
    ledger.record(of_payload("old", requested(name="appliance")))
    pushed = steps[0]

    def a_push_happens(_seconds: float) -> None:
        ledger.record(of_payload("new", pushed))

    assert statuscli.next_request(ledger, 60, sleep=a_push_happens) == pushed.build_id
    assert statuscli.next_request(Ledger(tmp_path / "quiet.sqlite3"), 0.2, poll=0.05) is None


def test_status_follow_of_an_ended_build_prints_it_and_exits_with_its_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger, steps = pipeline(tmp_path / "l.sqlite3")
    for n, step in enumerate(steps):
        ledger.record(of_payload(str(n), step))
    argv = ["status", steps[0].build_id[:10], "--follow", "--ledger", str(ledger.path)]
    assert cli.main(argv) == statuscli.EXIT_PUBLISHED
    assert "node 2 on main: published after" in capsys.readouterr().out
    quiet = str(Ledger(tmp_path / "quiet.sqlite3").path)
    assert cli.main(["status", "--follow", "--timeout", "0.2", "--ledger", quiet]) == 3
    assert "no build was requested within 0.2s" in capsys.readouterr().out
