"""One change to a host at a time: a command that would change the host while another holds
its lock stops at once with what to do, and changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgline.updater import hostlock
from imgline.updater.__main__ import CHANGING, main
from imgline.updater.settings import HostConfig

pytestmark = pytest.mark.unit


def config_file(tmp: Path) -> tuple[Path, HostConfig]:
    state = tmp / "state"
    path = tmp / "updater.toml"
    path.write_text(
        f'[consumer_config]\nstate_dir = "{state}"\nrepository_url = "http://127.0.0.1:1/"\n'
    )
    return path, HostConfig(state_dir=state, repository_url="http://127.0.0.1:1/")


@pytest.mark.parametrize("command", [["gc"], ["remove", "20261201.1"], ["abort"], ["adopt"]])
def test_a_changing_command_waits_for_no_one_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    path, config = config_file(tmp_path)
    with hostlock.changing(config):  # e.g. the agent in the middle of an apply
        assert main(["--config", str(path), *command]) == 1
    err = capsys.readouterr().err
    assert "host is being worked on by another instance or command" in err
    assert "try again once it is done" in err


def test_every_command_that_changes_the_host_takes_the_lock() -> None:
    assert {"apply", "rollback", "gc", "remove", "abort", "adopt", "health"} <= CHANGING
    assert not {"status", "install", "run"} & CHANGING  # run locks each check itself
