"""The private broker refuses clearly where it cannot work, before starting anything."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imgline.core import broker
from imgline.core.errors import BrokerError

pytestmark = pytest.mark.unit


def test_missing_rabbitmq_server_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrokerError, match="apt-get install rabbitmq-server"):
        broker.PrivateBroker(base_dir=tmp_path / "b").start()


def test_unreachable_directory_is_named(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    target = locked / "node"
    target.mkdir()
    with pytest.raises(BrokerError, match=r"cannot enter .*locked"):
        broker._check_reachable(target, uid=os.geteuid() + 12345)


def test_free_ports_differ() -> None:
    assert broker.free_port() != 0
    b = broker.PrivateBroker(base_dir=Path("/nonexistent-not-started"))
    assert b.port != b.dist_port
    # the administrator's URL, in the pipeline's vhost, with a password made for this node
    user, password = b.url.removeprefix("amqp://").split("@")[0].split(":")
    assert (user, len(password) >= 24) == ("imgline-admin", True)
    assert b.url.endswith(f"@127.0.0.1:{b.port}/imgline")
    assert b.url_for("builder") != b.url_for("tester")
    assert "guest" not in b.url


def test_a_private_node_keeps_the_passwords_it_is_given(tmp_path: Path) -> None:
    """A test host installed once holds its updater's password: a later node must accept it."""
    node = broker.PrivateBroker(tmp_path, passwords={"updater": "kept-from-the-install"})
    assert node.url_for("updater").startswith("amqp://updater:kept-from-the-install@")
    assert "kept-from-the-install" not in node.url_for("builder")
    with pytest.raises(ValueError, match="no such bus user: nobody"):
        broker.PrivateBroker(tmp_path, passwords={"nobody": "x"})
