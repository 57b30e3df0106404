"""The publisher refuses to start without what it needs, saying what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgline.core.config import BusSettings
from imgline.core.errors import ConfigError
from imgline.core.signing import generate_key
from imgline.publisher.__main__ import build_consumer, main

pytestmark = pytest.mark.unit


def settings(**config: object) -> BusSettings:
    return BusSettings(service="publisher", amqp_url="amqp://127.0.0.1:1/", consumer_config=config)


def test_missing_signing_key_names_the_command_that_makes_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"signing key: .*imgline keys generate"):
        build_consumer(settings(signing_key=str(tmp_path / "nope.key"), repo_dir=str(tmp_path)))


def test_base_url_must_be_http(tmp_path: Path) -> None:
    generate_key(tmp_path / "k")
    with pytest.raises(ConfigError, match="base_url"):
        build_consumer(settings(signing_key=str(tmp_path / "k"), base_url="ftp://x"))


def test_serve_with_a_bad_config_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMGLINE_AMQP_URL", raising=False)
    config = tmp_path / "publisher.toml"
    config.write_text('service = "publisher"\n[consumer_config]\nserve_port = 70000\n')
    assert main(["serve", "--config", str(config)]) == 2
    assert "serve_port" in capsys.readouterr().err
