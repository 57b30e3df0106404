"""The tester refuses to start on a bad configuration, saying what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgline.core.config import BusSettings
from imgline.core.errors import ConfigError
from imgline.tester.__main__ import build_consumer, main
from imgline.tester.errors import PlanError

pytestmark = pytest.mark.unit


def settings(**config: object) -> BusSettings:
    return BusSettings(service="tester", amqp_url="amqp://127.0.0.1:1/", consumer_config=config)


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match="plan_fiel"):
        build_consumer(settings(plan_fiel="x.toml"))


def test_missing_plan_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"test plan .*nope\.toml"):
        build_consumer(settings(plan_file=str(tmp_path / "nope.toml")))


def test_bad_plan_names_file_and_field(tmp_path: Path) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text("[defaults.boot]\nmemory_mib = 1\n")
    with pytest.raises(PlanError, match=r"plan\.toml: \[defaults\.boot\.memory_mib\]"):
        build_consumer(settings(plan_file=str(plan)))


def test_no_broker_configured() -> None:
    with pytest.raises(ConfigError, match="IMGLINE_AMQP_URL"):
        build_consumer(BusSettings(service="tester"))


def test_cli_exits_2_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMGLINE_AMQP_URL", raising=False)
    config = tmp_path / "tester.toml"
    config.write_text('service = "tester"\n[consumer_config]\naccel = "hvf"\n')
    assert main(["--config", str(config)]) == 2
    assert "accel" in capsys.readouterr().err
