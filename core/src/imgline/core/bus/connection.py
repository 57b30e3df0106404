"""How every imgline process opens its broker connection: the URL's credentials and vhost,
and for ``amqps://`` a TLS context that always verifies the broker (the CA from
``tls_ca_cert``, the host name from the URL) and presents a client certificate when one is
configured (docs/security.md, "The bus")."""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

import pika
import pika.exceptions

from imgline.core.config import BusSettings
from imgline.core.errors import ConfigError

#: AMQP reply codes the bus code acts on: a user lacks a permission; a name does not exist.
ACCESS_REFUSED = 403
NOT_FOUND = 404

#: A connection or channel that is gone, whatever the cause (including TLS): reconnect.
CONNECTION_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    ssl.SSLError,
)


def tls_context(settings: BusSettings) -> ssl.SSLContext:
    """A client context that verifies the broker against ``tls_ca_cert``, with the client
    certificate loaded when one is set; unreadable or mismatched files are a ``ConfigError``."""
    if settings.tls_ca_cert is None:
        raise ConfigError("amqps:// needs tls_ca_cert, the CA that signed the broker's certificate")
    try:
        context = ssl.create_default_context(cafile=str(settings.tls_ca_cert))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"tls_ca_cert {settings.tls_ca_cert} is not a readable CA: {exc}"
        ) from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.tls_cert is not None and settings.tls_key is not None:
        try:
            context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the client certificate {settings.tls_cert} with key "
                f"{settings.tls_key}: {exc}"
            ) from exc
    return context


def connection_parameters(url: str, settings: BusSettings) -> pika.URLParameters:
    """Parameters for ``url`` with the service's heartbeat, a name the broker shows, and TLS
    for ``amqps://``. TLS options in the URL's query are ignored in favour of the settings."""
    params = pika.URLParameters(url)
    params.heartbeat = settings.heartbeat_seconds
    params.blocked_connection_timeout = 300
    params.client_properties = {"connection_name": f"imgline-{settings.service}"}
    if url.startswith("amqps://"):
        host = urlsplit(url).hostname or ""
        params.ssl_options = pika.SSLOptions(tls_context(settings), server_hostname=host)
    return params
