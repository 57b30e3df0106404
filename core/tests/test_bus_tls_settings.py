"""TLS settings are all or nothing, and amqps:// always verifies the broker."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from imgline.core.bus.connection import connection_parameters
from imgline.core.config import BusSettings
from imgline.core.errors import ConfigError
from imgline.core.localca import LocalCA

pytestmark = pytest.mark.unit

URL = "amqps://builder:pw@localhost:5671/imgline"


def settings(**values: Any) -> BusSettings:
    return BusSettings(service="builder", **values)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"amqp_url": URL}, "amqps:// needs tls_ca_cert"),
        ({"amqp_url": URL, "tls_ca_cert": "ca.pem", "tls_cert": "c.pem"}, "tls_cert and tls_key"),
        ({"amqp_url": URL, "tls_ca_cert": "ca.pem", "tls_key": "c.key"}, "tls_cert and tls_key"),
        ({"amqp_url": "amqp://h/imgline", "tls_ca_cert": "ca.pem"}, "use amqps://"),
    ],
)
def test_half_a_tls_configuration_is_refused(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        settings(**values)


def test_amqps_verifies_the_broker_and_presents_the_client_certificate(tmp_path: Path) -> None:
    ca = LocalCA(tmp_path)
    client = ca.issue("builder", server=False)
    s = settings(amqp_url=URL, tls_ca_cert=ca.cert_path, tls_cert=client.cert, tls_key=client.key)
    params = connection_parameters(URL, s)
    assert params.ssl_options is not None
    context = params.ssl_options.context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert params.ssl_options.server_hostname == "localhost"
    assert params.virtual_host == "imgline"
    assert params.client_properties == {"connection_name": "imgline-builder"}


def test_plain_amqp_has_no_tls(tmp_path: Path) -> None:
    url = "amqp://builder:pw@127.0.0.1:5672/imgline"
    assert connection_parameters(url, settings(amqp_url=url)).ssl_options is None


def test_unreadable_tls_files_are_named(tmp_path: Path) -> None:
    ca = LocalCA(tmp_path)
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match=r"nope\.pem"):
        connection_parameters(URL, settings(amqp_url=URL, tls_ca_cert=missing))
    bad = settings(amqp_url=URL, tls_ca_cert=ca.cert_path, tls_cert=missing, tls_key=missing)
    with pytest.raises(ConfigError, match="cannot load the client certificate"):
        connection_parameters(URL, bad)
