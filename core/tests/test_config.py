"""Settings: TOML file, IMGLINE_* overrides, and errors that name the key and its source."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgline.core.config import BusSettings, load_settings
from imgline.core.errors import ConfigError

pytestmark = pytest.mark.unit


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "builder.toml"
    path.write_text(text)
    return path


def test_file_then_environment_then_validation(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'service = "builder"\ndelivery_limit = 7\n[consumer_config]\nbackend = "mmdebstrap"\n',
    )
    env = {"IMGLINE_AMQP_URL": "amqp://u:p@127.0.0.1:5999/%2F", "IMGLINE_PREFETCH": "2"}
    s = load_settings(BusSettings, path, env)
    assert s.service == "builder"
    assert s.delivery_limit == 7
    assert s.prefetch == 2
    assert s.amqp_url == "amqp://u:p@127.0.0.1:5999/%2F"
    assert s.consumer_config == {"backend": "mmdebstrap"}
    assert s.queue_name == "imgline.builder"
    assert s.routing_key("image.built") == "imgline.image.built"


def test_config_path_from_environment_and_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, 'exchange = "acme"\n')
    s = load_settings(BusSettings, env={"IMGLINE_CONFIG": str(path)}, service="tester")
    assert (s.service, s.exchange, s.queue_name) == ("tester", "acme", "acme.tester")


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ('service = "b"\ndelivery_limt = 3\n', {}, "delivery_limt (FILE): Extra inputs"),
        ('service = "b"\n', {"IMGLINE_PREFETCH": "many"}, "prefetch (IMGLINE_PREFETCH): Input"),
        ('service = "b"\namqp_url = "http://x"\n', {}, "amqp_url (FILE): Value error, must start"),
        ('service = "b"\ndelivery_limit = 0\n', {}, "delivery_limit (FILE): Input should be"),
        ("delivery_limit = 3\n", {}, "service (FILE): Field required"),
        ('service = "b"\n[consumer_config\n', {}, "is not valid TOML"),
        (
            'service = "b"\n',
            {"IMGLINE_CONSUMER_CONFIG": "{nope"},
            "IMGLINE_CONSUMER_CONFIG must be a JSON object",
        ),
    ],
)
def test_errors_name_the_key_and_where_it_came_from(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(BusSettings, path, env)
    assert message.replace("FILE", str(path)) in str(info.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope.toml does not exist"):
        load_settings(BusSettings, tmp_path / "nope.toml", {})
