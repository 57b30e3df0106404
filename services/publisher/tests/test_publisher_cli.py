"""The publisher refuses to start without what it needs, saying what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgline.core.config import BusSettings
from imgline.core.errors import ConfigError
from imgline.core.trust.keys import KeyDir
from imgline.core.trust.repository import TufRepository
from imgline.publisher.__main__ import build_consumer, main

pytestmark = pytest.mark.unit


def settings(**config: object) -> BusSettings:
    return BusSettings(service="publisher", amqp_url="amqp://127.0.0.1:1/", consumer_config=config)


def paths(tmp_path: Path) -> dict[str, str]:
    return {
        "repo_dir": str(tmp_path / "repo"),
        "keys_dir": str(tmp_path / "keys"),
        "work_dir": str(tmp_path / "work"),
    }


def test_a_missing_repository_names_the_command_that_creates_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no repository at .*`imgline repo init "):
        build_consumer(settings(**paths(tmp_path)))


@pytest.mark.parametrize("role", ["timestamp", "snapshot", "targets"])
def test_a_missing_online_key_names_its_role(tmp_path: Path, role: str) -> None:
    TufRepository.init(tmp_path / "repo", KeyDir(tmp_path / "keys"), KeyDir(tmp_path / "root"))
    for key in (tmp_path / "keys" / role).glob("*.key"):
        key.unlink()
    with pytest.raises(ConfigError, match=rf"^repository: .*\b{role}\b"):
        build_consumer(settings(**paths(tmp_path)))


@pytest.mark.parametrize("url", ["ftp://x", "file:///srv/repo", "repo.example.org"])
def test_base_url_must_be_http(tmp_path: Path, url: str) -> None:
    TufRepository.init(tmp_path / "repo", KeyDir(tmp_path / "keys"), KeyDir(tmp_path / "root"))
    with pytest.raises(ConfigError, match="base_url"):
        build_consumer(settings(**paths(tmp_path), base_url=url))


def test_serve_with_a_bad_config_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMGLINE_AMQP_URL", raising=False)
    config = tmp_path / "publisher.toml"
    config.write_text('service = "publisher"\n[consumer_config]\nserve_port = 70000\n')
    assert main(["serve", "--config", str(config)]) == 2
    assert "serve_port" in capsys.readouterr().err
