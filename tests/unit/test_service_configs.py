"""deploy/config/: the example configuration of every service loads through the service's own
settings model, as the service loads it, so a renamed or removed key breaks this test. The
ledger's model is not part of these tests: its bus settings are checked, and its table is TOML.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from deployfiles import DEPLOY, SERVICES, broker_env, config_path
from pydantic import BaseModel

from imgline.builder.settings import BuilderConfig
from imgline.core.bus.topology import BROKER_LIMIT_MARGIN
from imgline.core.config import BusSettings, load_settings
from imgline.core.errors import ConfigError
from imgline.ledger.settings import LedgerConfig
from imgline.publisher.settings import PublisherConfig
from imgline.tester.domain.plan import load_plan
from imgline.tester.settings import TesterConfig
from imgline.trigger.domain.rules import load_rules
from imgline.trigger.settings import TriggerConfig
from imgline.updater.settings import HostConfig

pytestmark = pytest.mark.unit

MODELS: dict[str, type[BaseModel] | None] = {
    "builder": BuilderConfig,
    "tester": TesterConfig,
    "publisher": PublisherConfig,
    "trigger": TriggerConfig,
    "ledger": LedgerConfig,
    "updater": HostConfig,
}
#: The metrics ports by convention (deploy/prometheus/prometheus.yml scrapes them).
METRICS_PORTS = {
    "trigger": 9410,
    "builder": 9411,
    "tester": 9412,
    "publisher": 9413,
    "ledger": 9414,
    "updater": 9415,
}
DEFINITIONS = DEPLOY / "rabbitmq" / "definitions.json"


def load(service: str) -> tuple[BusSettings, BaseModel | None]:
    settings = load_settings(
        BusSettings, config_path(service), env=broker_env(service), service=service
    )
    model = MODELS[service]
    return settings, None if model is None else model.model_validate(settings.consumer_config)


def test_every_service_has_an_example_and_a_model() -> None:
    assert set(MODELS) == set(SERVICES)
    examples = {p.stem for p in (DEPLOY / "config").glob("*.toml")}
    assert examples == {*SERVICES, "trigger-rules"}


@pytest.mark.parametrize("service", SERVICES)
def test_an_example_loads_through_the_services_own_settings(service: str) -> None:
    settings, config = load(service)
    assert settings.service == service
    assert config is not None
    assert settings.metrics_port == METRICS_PORTS.get(service)
    # TLS as deploy/rabbitmq/rabbitmq.conf requires: a client certificate for every service
    assert settings.tls_ca_cert is not None
    assert settings.tls_cert == Path(f"/etc/imgline/tls/{service}.pem")
    assert settings.tls_key is not None


@pytest.mark.parametrize("service", SERVICES)
def test_an_example_keeps_its_password_out_of_the_file(service: str) -> None:
    raw = tomllib.loads(config_path(service).read_text())
    assert "amqp_url" not in raw  # IMGLINE_AMQP_URL, from /etc/imgline/<service>.env


def test_a_renamed_key_is_an_error(tmp_path: Path) -> None:
    """The check above is worth something only because unknown keys are refused."""
    text = config_path("builder").read_text().replace("store_dir", "stor_dir")
    bad = tmp_path / "builder.toml"
    bad.write_text(text)
    settings = load_settings(BusSettings, bad, env=broker_env("builder"), service="builder")
    with pytest.raises(ValueError, match="stor_dir"):
        BuilderConfig.model_validate(settings.consumer_config)
    bad.write_text("metric_port = 9411\n")
    with pytest.raises(ConfigError, match="metric_port"):
        load_settings(BusSettings, bad, env=broker_env("builder"), service="builder")


def test_the_ledger_example_names_its_database_in_its_state_directory() -> None:
    settings, _ = load("ledger")
    assert settings.consumer_config == {"db_path": "/var/lib/imgline/ledger/ledger.sqlite3"}


@pytest.mark.parametrize("service", ["builder", "tester", "publisher", "ledger"])
def test_a_consumers_queue_is_the_one_the_definitions_declare(service: str) -> None:
    """A service declares its queue with its own arguments; the broker refuses the declaration
    when the definitions made it with others, so the example must keep them equal."""
    settings, _ = load(service)
    queues = {q["name"]: q for q in json.loads(DEFINITIONS.read_text())["queues"]}
    queue: dict[str, Any] = queues[settings.queue_name]
    assert queue["arguments"]["x-delivery-limit"] == settings.delivery_limit + BROKER_LIMIT_MARGIN
    assert queue["arguments"]["x-dead-letter-exchange"] == settings.dead_letter_exchange


def test_the_pipeline_examples_share_one_store() -> None:
    stores = {load(s)[0].consumer_config["store_dir"] for s in ("builder", "tester", "publisher")}
    assert len(stores) == 1


def test_the_trigger_rules_load_and_every_forge_has_a_secret() -> None:
    _, config = load("trigger")
    assert isinstance(config, TriggerConfig)
    assert config.rules_file == Path("/etc/imgline/trigger-rules.toml")
    rules = load_rules((DEPLOY / "config" / "trigger-rules.toml").read_text(), "trigger-rules")
    assert rules.rule
    forges = {rule.forge for rule in rules.rule}
    assert None not in forges
    assert forges <= set(config.secret_files)


def test_the_tester_plan_named_has_an_example() -> None:
    _, config = load("tester")
    assert isinstance(config, TesterConfig)
    assert config.plan_file is not None
    example = DEPLOY.parent / "examples" / config.plan_file.name
    assert load_plan(example.read_text(), str(example))
