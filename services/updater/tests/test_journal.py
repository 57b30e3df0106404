"""The apply journal, the host state and their atomic files."""

from __future__ import annotations

import json
import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from imgline.updater.domain.journal import (
    STEPS,
    ApplyJournal,
    HostState,
    LastResult,
    Layer,
    Pending,
    load_json,
    save_json,
    undo_plan,
)
from imgline.updater.errors import UpdaterError

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def journal(done: tuple[str, ...] = ()) -> ApplyJournal:
    return ApplyJournal(
        name="node",
        version="20261201.3",
        build_id="b" * 64,
        image_sha256="a" * 64,
        image_path="/var/lib/imgline/downloads/node-20261201.3.img",
        base_lv="node-20261201.3",
        layer_lv="node-20261201.3+1",
        entry_id="imgline-node-20261201.3",
        from_layer="node-20261201.2+1",
        from_version="20261201.2",
        from_entry="imgline-node-20261201.2",
        started=T0,
        done=list(done),
    )


def layer(version: str, minutes: int = 0) -> Layer:
    return Layer(
        name="node",
        version=version,
        build_id="c" * 64,
        base_lv=f"node-{version}",
        layer_lv=f"node-{version}+1",
        entry_id=f"imgline-node-{version}",
        kernel_args="root=/dev/imgline/x rw",
        applied=T0 + timedelta(minutes=minutes),
    )


def state(versions: list[str], default: str, pending: str | None = None) -> HostState:
    return HostState(
        name="node",
        stream="stable",
        boot_loader="grub",
        vg="imgline",
        layers=[layer(v, i) for i, v in enumerate(versions)],
        default_layer=f"node-{default}+1",
        pending=(
            Pending(
                layer_lv=f"node-{pending}+1",
                version=pending,
                from_layer_lv=f"node-{default}+1",
                from_version=default,
                tries=3,
                since=T0,
            )
            if pending
            else None
        ),
    )


# --- the journal --------------------------------------------------------------------------------


def test_steps_are_walked_in_order_and_switch_default_is_last() -> None:
    jr = journal()
    seen = []
    while (step := jr.next_step()) is not None:
        assert not jr.switched
        seen.append(step)
        jr = jr.mark_done(step)
    assert tuple(seen) == STEPS
    assert STEPS[-1] == "switch_default"
    assert jr.switched
    assert jr.done == list(STEPS)


def test_mark_done_returns_a_copy() -> None:
    jr = journal()
    after = jr.mark_done("verify")
    assert jr.done == []
    assert after.done == ["verify"]


@pytest.mark.parametrize(
    ("done", "step"),
    [((), "create_lv"), (("verify",), "verify"), (("verify",), "copy"), (STEPS, "verify")],
)
def test_mark_done_refuses_out_of_order(done: tuple[str, ...], step: str) -> None:
    with pytest.raises(UpdaterError, match=f"step {step!r} cannot be done now") as caught:
        journal(done).mark_done(step)
    assert caught.value.step == step


@pytest.mark.parametrize("done", [["copy"], ["verify", "copy"], ["verify", "verify"], ["x"]])
def test_a_journal_with_steps_out_of_order_does_not_load(done: list[str]) -> None:
    data = journal().model_dump(mode="json") | {"done": done}
    with pytest.raises(ValueError, match="not a prefix of the apply steps"):
        ApplyJournal.model_validate(data)


@pytest.mark.parametrize("drop", ["from_layer", "from_entry"])
def test_an_upgrade_journal_names_its_fallback_entry_with_its_layer(drop: str) -> None:
    """The switch falls back to the entry recorded here, so half of the pair is refused."""
    data = journal().model_dump(mode="json") | {drop: None}
    with pytest.raises(ValueError, match="given together or not at all"):
        ApplyJournal.model_validate(data)


def test_journal_round_trips_with_notes(tmp_path: Path) -> None:
    jr = journal(STEPS[:8]).model_copy(
        update={"notes": {"rootfs_bytes": 123, "options": "ro", "etc_conflicts": ["a", "b/c"]}}
    )
    path = tmp_path / "journal.json"
    save_json(path, jr)
    assert load_json(path, ApplyJournal) == jr


def test_naive_timestamps_are_refused() -> None:
    data = journal().model_dump(mode="json") | {"started": "2026-12-01T03:00:00"}
    with pytest.raises(ValueError, match="timezone-aware UTC"):
        ApplyJournal.model_validate(data)


# --- undo ---------------------------------------------------------------------------------------

BASE = "lv:node-20261201.3"
LAYER = "lv:node-20261201.3+1"
BOOTDIR = "bootdir:node-20261201.3+1"
ENTRY = "entry:imgline-node-20261201.3"


@pytest.mark.parametrize(
    ("done", "plan"),
    [
        (0, []),  # verify was running: it makes nothing
        (1, [BASE]),  # create_lv was running: the LV may exist
        (2, [BASE]),
        (3, [BASE]),
        (4, [BASE]),
        (5, [LAYER, BASE]),  # snapshot was running
        (6, [LAYER, BASE]),
        (7, [LAYER, BASE]),
        (8, [BOOTDIR, LAYER, BASE]),  # boot_files was running
        (9, [ENTRY, BOOTDIR, LAYER, BASE]),  # boot_entry was running
        (10, [ENTRY, BOOTDIR, LAYER, BASE]),  # switch_default was running
    ],
)
def test_undo_plan_for_every_prefix(done: int, plan: list[str]) -> None:
    assert len(STEPS) == 11
    assert undo_plan(journal(STEPS[:done])) == plan


def test_undo_after_the_switch_is_refused() -> None:
    with pytest.raises(UpdaterError, match="roll back to the previous layer instead"):
        undo_plan(journal(STEPS))


# --- the host state -----------------------------------------------------------------------------


def test_lookups() -> None:
    st = state(["20261101.1", "20261201.2", "20261201.3"], "20261201.2", pending="20261201.3")
    assert st.layer("node-20261201.2+1") == layer("20261201.2", 1)
    assert st.layer("node-1+1") is None
    assert st.by_version("20261201.3") == layer("20261201.3", 2)
    assert st.by_version("1") is None
    assert st.running_default().version == "20261201.2"


@pytest.mark.parametrize(
    ("host", "keep", "protect", "gone"),
    [
        # host: (layers oldest first, default, pending)
        ((["1", "2"], "2", None), 2, set(), []),
        ((["1", "2", "3"], "3", None), 2, set(), ["1"]),
        ((["1", "2", "3", "4"], "4", None), 2, set(), ["1", "2"]),
        ((["1", "2", "3", "4"], "4", None), 3, set(), ["1"]),
        # the default is never removed, even when it is the oldest (after a rollback)
        ((["1", "2", "3", "4"], "1", None), 2, set(), ["2", "3"]),
        # the layer on trial is never removed
        ((["1", "2", "3"], "2", "3"), 1, set(), ["1"]),
        # protected layers (the one booted now) are spared; the count may then stay above keep
        ((["1", "2", "3"], "3", None), 1, {"node-1+1", "node-2+1"}, []),
        ((["1", "2", "3", "4"], "4", None), 2, {"node-1+1"}, ["2", "3"]),
    ],
)
def test_gc_candidates(
    host: tuple[list[str], str, str | None], keep: int, protect: set[str], gone: list[str]
) -> None:
    st = state(*host)
    assert [x.version for x in st.gc_candidates(keep, protect)] == gone


def test_gc_needs_to_keep_something() -> None:
    with pytest.raises(UpdaterError, match="keep must be at least 1"):
        state(["1"], "1").gc_candidates(0, set())


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"default_layer": "node-9+1"}, "default_layer 'node-9+1' is not one of"),
        ({"layers": [layer("1").model_dump(), layer("1").model_dump()]}, "listed twice"),
        ({"format": "imgline-host/2"}, "imgline-host/1"),
        ({"boot_loader": "lilo"}, "grub"),
        ({"surprise": 1}, "Extra inputs are not permitted"),
    ],
)
def test_inconsistent_state_is_refused(change: dict[str, object], error: str) -> None:
    data = state(["1", "2"], "2").model_dump(mode="json") | change
    with pytest.raises(ValueError, match=re.escape(error)):
        HostState.model_validate(data)


def test_pending_must_name_a_layer() -> None:
    data = state(["1", "2"], "1", pending="2").model_dump(mode="json")
    data["pending"]["layer_lv"] = "node-7+1"
    with pytest.raises(ValueError, match="the pending layer 'node-7\\+1' is not one of"):
        HostState.model_validate(data)


def test_state_round_trips(tmp_path: Path) -> None:
    st = state(["1", "2"], "1", pending="2").model_copy(
        update={
            "bad_versions": ["0"],
            "last_result": LastResult(
                kind="upgrade_failed",
                version="2",
                from_version="1",
                step="merge_etc",
                error="boom",
                at=T0,
            ),
        }
    )
    path = tmp_path / "state.json"
    save_json(path, st)
    assert load_json(path, HostState) == st
    assert json.loads(path.read_text())["format"] == "imgline-host/1"


# --- atomic files -------------------------------------------------------------------------------


def test_save_replaces_atomically_with_mode_0644(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("old")
    path.chmod(0o600)
    save_json(path, state(["1"], "1"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left
    assert load_json(path, HostState) == state(["1"], "1")


def test_save_failure_names_the_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "gone" / "state.json"
    with pytest.raises(UpdaterError, match=r"cannot write .*state.json.*exists, is writable"):
        save_json(path, state(["1"], "1"))
    target = tmp_path / "dir-in-the-way"
    target.mkdir()
    with pytest.raises(UpdaterError, match="cannot write"):
        save_json(target, state(["1"], "1"))  # os.replace cannot put a file over a directory
    assert [p.name for p in tmp_path.iterdir()] == ["dir-in-the-way"]


def test_load_missing_is_none(tmp_path: Path) -> None:
    assert load_json(tmp_path / "state.json", HostState) is None


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (b"{not json", "the file"),
        (b'{"format": "imgline-host/1"}', "name"),
        (b"\xff\xfe", "the file"),
        (b"", "the file"),
    ],
)
def test_corrupt_file_tells_the_admin_what_to_do(tmp_path: Path, text: bytes, where: str) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(text)
    with pytest.raises(UpdaterError) as caught:
        load_json(path, HostState)
    message = str(caught.value)
    assert f"{path} is corrupt ({where}:" in message
    assert "`imgline-updater status`" in message
    assert "rerun" in message
