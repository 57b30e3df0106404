"""The handler skeleton every stage shares: replay, one worker per key, permanent errors end
in the failure event, transient ones propagate, the scratch directory never stays behind."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from fedora_messaging import message as fm_message

from imgline.core.bus.policy import CURRENT_ATTEMPT, Attempt
from imgline.core.bus.stage import StageHandler, exclusive
from imgline.core.errors import PermanentError, TransientError

pytestmark = pytest.mark.unit


class Msg:
    def __init__(self, payload: str) -> None:
        self.payload = payload


def event(text: str) -> fm_message.Message:
    return fm_message.Message(body={"event": text}, topic=f"t.{text}")


class FakeStage:
    """Stores results in a dict; ``behaviour`` decides what ``run`` does."""

    def __init__(self, behaviour: Any = None) -> None:
        self.stored: dict[str, str] = {}
        self.runs: list[tuple[str, Path]] = []
        self.behaviour = behaviour

    def resolve(self, payload: str) -> str:
        if payload.startswith("unknown-"):
            raise PermanentError(f"{payload} names nothing")
        if payload.startswith("later-"):
            raise TransientError(f"{payload}: the server is down")
        return payload.removeprefix("branch-")  # a request that names "branch-x" means "x"

    def key(self, payload: str) -> str:
        return f"k-{payload}"

    def replay(self, payload: str) -> fm_message.Message | None:
        return event(self.stored[payload]) if payload in self.stored else None

    def run(self, payload: str, workdir: Path) -> fm_message.Message | None:
        self.runs.append((payload, workdir))
        assert workdir.is_dir() and not any(workdir.iterdir())
        assert workdir.stat().st_mode & 0o777 == 0o700
        (workdir / "scratch").write_text("x")
        if self.behaviour is not None:
            return self.behaviour(payload)  # type: ignore[no-any-return]
        self.stored[payload] = f"done-{payload}"
        return event(f"done-{payload}")

    def failed(self, payload: str, error: PermanentError, workdir: Path) -> fm_message.Message:
        if self.runs:
            assert (workdir / "scratch").exists()  # still there for the failure report
        else:  # resolve() failed: there was no work and is no scratch directory
            assert not workdir.exists()
        return event(f"failed-{payload}: {error}")


def handler(stage: FakeStage, tmp: Path, sent: list[Any]) -> StageHandler[str]:
    return StageHandler(stage, work_dir=tmp / "work", lock_dir=tmp / "locks", publish=sent.append)


def test_work_once_then_replay(tmp_path: Path) -> None:
    stage, sent = FakeStage(), []
    h = handler(stage, tmp_path, sent)
    h(Msg("a"))
    h(Msg("a"))  # a redelivery
    assert [m.body["event"] for m in sent] == ["done-a", "done-a"]
    assert len(stage.runs) == 1
    assert not (tmp_path / "work" / "k-a").exists()


def test_a_permanent_error_ends_in_the_failure_event(tmp_path: Path) -> None:
    def boom(payload: str) -> fm_message.Message:
        raise PermanentError("bad input")

    stage, sent = FakeStage(boom), []
    handler(stage, tmp_path, sent)(Msg("b"))
    assert [m.body["event"] for m in sent] == ["failed-b: bad input"]
    assert not (tmp_path / "work" / "k-b").exists()


def test_transient_errors_and_crashes_propagate_and_clean_up(tmp_path: Path) -> None:
    for exc in (TransientError("later"), RuntimeError("bug")):

        def fail(payload: str, exc: Exception = exc) -> fm_message.Message:
            raise exc

        stage, sent = FakeStage(fail), []
        with pytest.raises(type(exc)):
            handler(stage, tmp_path, sent)(Msg("c"))
        assert sent == []
        assert not (tmp_path / "work" / "k-c").exists()


def test_a_transient_error_on_the_last_try_ends_in_the_failure_event(tmp_path: Path) -> None:
    def fail(payload: str) -> fm_message.Message:
        raise TransientError("mirror down")

    for number, limit, outcome in ((2, 3, "raise"), (3, 3, "failed"), (4, 3, "failed")):
        stage, sent = FakeStage(fail), []
        token = CURRENT_ATTEMPT.set(Attempt(number, limit))
        try:
            if outcome == "raise":
                with pytest.raises(TransientError):
                    handler(stage, tmp_path, sent)(Msg("d"))
                assert sent == []
            else:
                handler(stage, tmp_path, sent)(Msg("d"))
                assert [m.body["event"] for m in sent] == [
                    f"failed-d: gave up after {number} attempts: mirror down"
                ]
        finally:
            CURRENT_ATTEMPT.reset(token)


def test_nothing_to_announce_publishes_nothing(tmp_path: Path) -> None:
    stage, sent = FakeStage(lambda payload: None), []
    handler(stage, tmp_path, sent)(Msg("d"))
    assert sent == []


def test_leftovers_of_a_crashed_attempt_are_removed_first(tmp_path: Path) -> None:
    old = tmp_path / "work" / "k-e"
    old.mkdir(parents=True)
    (old / "half-built").write_text("x")
    stage, sent = FakeStage(), []
    handler(stage, tmp_path, sent)(Msg("e"))  # run() asserts an empty directory
    assert [m.body["event"] for m in sent] == ["done-e"]


def test_a_second_worker_on_the_same_key_is_told_to_retry(tmp_path: Path) -> None:
    """While one instance works on a key, another delivery of it is a transient error; once the
    first is done, the retry finds its stored result instead of working again."""
    inside, release = threading.Event(), threading.Event()

    def slow(payload: str) -> fm_message.Message:
        inside.set()
        assert release.wait(10)
        stage.stored[payload] = "done-slow"
        return event("done-slow")

    stage, sent = FakeStage(slow), []
    h = handler(stage, tmp_path, sent)
    first = threading.Thread(target=h, args=(Msg("f"),))
    first.start()
    assert inside.wait(10)
    with pytest.raises(TransientError, match="another instance"):
        h(Msg("f"))
    release.set()
    first.join(10)
    h(Msg("f"))  # the retry
    assert [m.body["event"] for m in sent] == ["done-slow", "done-slow"]
    assert len(stage.runs) == 1


def test_the_lock_is_released_when_its_holder_ends(tmp_path: Path) -> None:
    with exclusive(tmp_path, "k"):
        with pytest.raises(TransientError), exclusive(tmp_path, "k"):
            pass
    with exclusive(tmp_path, "k"):  # free again
        pass


def test_a_waiting_taker_gets_the_lock_once_its_holder_is_done(tmp_path: Path) -> None:
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with exclusive(tmp_path, "k"):
            taken.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert taken.wait(10)
    with pytest.raises(TransientError, match="try again once it is done"):
        with exclusive(tmp_path, "k", wait_seconds=0.3):
            pass
    threading.Timer(0.3, release.set).start()
    with exclusive(tmp_path, "k", wait_seconds=10):
        assert not holder.is_alive() or release.is_set()
    holder.join(10)


def test_what_a_request_means_is_settled_before_replay_and_work(tmp_path: Path) -> None:
    stage, sent = FakeStage(), []
    h = handler(stage, tmp_path, sent)
    h(Msg("x"))
    h(Msg("branch-x"))  # names the same work as "x": its result, not new work
    assert [m.body["event"] for m in sent] == ["done-x", "done-x"]
    assert [p for p, _ in stage.runs] == ["x"]


def test_a_request_that_cannot_be_settled_ends_in_the_failure_event(tmp_path: Path) -> None:
    stage, sent = FakeStage(), []
    h = handler(stage, tmp_path, sent)
    h(Msg("unknown-y"))
    with pytest.raises(TransientError):
        h(Msg("later-z"))
    token = CURRENT_ATTEMPT.set(Attempt(5, 5))
    try:
        h(Msg("later-z"))
    finally:
        CURRENT_ATTEMPT.reset(token)
    assert [m.body["event"] for m in sent] == [
        "failed-unknown-y: unknown-y names nothing",
        "failed-later-z: gave up after 5 attempts: later-z: the server is down",
    ]
    assert stage.runs == []
