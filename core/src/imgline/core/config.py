"""Settings: one TOML file per service plus ``IMGLINE_*`` environment overrides.

Services subclass ``BusSettings`` with their own fields; ``load_settings`` validates the merged
result and turns pydantic's errors into one ``ConfigError`` naming the file, key and reason.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from imgline.core.errors import ConfigError

ENV_PREFIX = "IMGLINE_"
CONFIG_ENV = "IMGLINE_CONFIG"

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$"


def amqp_scheme(url: str | None) -> str | None:
    """``url`` when it is an AMQP URL (or unset); a ``ValueError`` for pydantic otherwise."""
    if url is not None and not url.startswith(("amqp://", "amqps://")):
        raise ValueError("must start with amqp:// or amqps://")
    return url


def check_tls(url: str | None, ca_cert: Path | None, cert: Path | None, key: Path | None) -> None:
    """TLS is all or nothing: a half-configured client would talk in the clear or fail later
    with a less helpful message. A ``ValueError`` for pydantic; every broker connection's
    settings (the pipeline's, a forge's bus) go through it."""
    if (cert is None) != (key is None):
        raise ValueError("tls_cert and tls_key go together: set both or neither")
    if (url or "").startswith("amqps://") and ca_cert is None:
        raise ValueError(
            "amqps:// needs tls_ca_cert, the CA that signed the broker's certificate "
            "(the broker's identity is always verified)"
        )
    if (url or "").startswith("amqp://") and (ca_cert or cert):
        raise ValueError("tls_ca_cert/tls_cert are set but amqp_url is plain amqp://: use amqps://")


class BusSettings(BaseModel):
    """How a service reaches the broker and names its queues."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    service: str = Field(
        pattern=_NAME, description="service name; the queue is <exchange>.<service>"
    )
    amqp_url: str | None = Field(
        default=None, description="amqp://user:pass@host:port/vhost; unset: start a private node"
    )
    exchange: str = Field(default="imgline", pattern=_NAME)
    topic_prefix: str = Field(default="imgline", pattern=_NAME)
    queue: str | None = Field(
        default=None, pattern=_NAME, description="default <exchange>.<service>"
    )
    dead_letter_exchange: str = Field(default="imgline.dlx", pattern=_NAME)
    dead_letter_queue: str = Field(default="imgline.dead-letter", pattern=_NAME)
    retry_exchange: str | None = Field(
        default=None,
        pattern=_NAME,
        description="where a failed message goes back to its own queue; default <exchange>.retry",
    )
    events_queue: str | None = Field(
        default=None,
        pattern=_NAME,
        description="audit queue that every event reaches; default <exchange>.events",
    )
    events_max_length: int = Field(
        default=100_000, ge=1, description="the audit queue keeps this many newest events"
    )
    delivery_limit: int = Field(default=5, ge=1, le=1000, description="attempts before dead-letter")
    retry_delay_seconds: float = Field(default=1.0, ge=0, le=3600)
    prefetch: int = Field(default=1, ge=1, le=1000)
    heartbeat_seconds: int = Field(default=60, ge=1, le=3600)
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    reconnect_max_seconds: float = Field(default=30.0, gt=0)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = Field(
        default="127.0.0.1",
        pattern=r"^[0-9A-Za-z.:-]{1,253}$",
        description="address /metrics listens on; 0.0.0.0 (or ::) lets a remote Prometheus in",
    )
    state_dir: Path | None = Field(default=None, description="where idempotency records live")
    consumer_config: dict[str, Any] = Field(default_factory=dict)
    tls_ca_cert: Path | None = Field(
        default=None, description="CA that signed the broker's certificate; amqps:// needs it"
    )
    tls_cert: Path | None = Field(default=None, description="client certificate (PEM)")
    tls_key: Path | None = Field(default=None, description="client certificate's key (PEM)")

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, value: str | None) -> str | None:
        return amqp_scheme(value)

    @model_validator(mode="after")
    def _tls_complete(self) -> BusSettings:
        check_tls(self.amqp_url, self.tls_ca_cert, self.tls_cert, self.tls_key)
        return self

    @property
    def queue_name(self) -> str:
        """This service's durable queue, shared by all its instances."""
        return self.queue or f"{self.exchange}.{self.service}"

    @property
    def retry_exchange_name(self) -> str:
        """The exchange a service sends a failed message back through, to its own queue only
        (routing key = queue name), with the attempts counted in a header."""
        return self.retry_exchange or f"{self.exchange}.retry"

    @property
    def events_queue_name(self) -> str:
        """The audit queue: a copy of every event, for status views and dashboards."""
        return self.events_queue or f"{self.exchange}.events"

    def routing_key(self, topic: str) -> str:
        """``<prefix>.<topic>`` as messages are published."""
        return f"{self.topic_prefix}.{topic}"


S = TypeVar("S", bound=BaseModel)


def _from_env(model: type[BaseModel], env: Mapping[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        origin = getattr(field.annotation, "__origin__", None)
        if field.annotation is dict or origin is dict:
            try:
                found[name] = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"{ENV_PREFIX}{name.upper()} must be a JSON object: {exc}"
                ) from exc
        else:
            found[name] = raw
    return found


def load_settings(
    model: type[S],
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    **defaults: Any,
) -> S:
    """Read ``path`` (or ``$IMGLINE_CONFIG``), overlay ``IMGLINE_<KEY>`` variables, validate.

    ``defaults`` are used where neither the file nor the environment sets a key (wiring code
    passes e.g. ``service="builder"``).
    """
    env = os.environ if env is None else env
    if path is None and env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
    data: dict[str, Any] = dict(defaults)
    source = "defaults"
    if path is not None:
        try:
            with path.open("rb") as fh:
                data.update(tomllib.load(fh))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        source = str(path)
    overrides = _from_env(model, env)
    data.update(overrides)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            key = ".".join(str(x) for x in err["loc"])
            top = str(err["loc"][0]) if err["loc"] else ""
            origin = f"{ENV_PREFIX}{top.upper()}" if top in overrides else source
            problems.append(f"{key} ({origin}): {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from exc


def parse_toml(text: str, model: type[S], source: str, error: type[ConfigError] = ConfigError) -> S:
    """``text`` (TOML) validated as ``model``; an ``error`` naming ``source``, and the line
    (bad TOML) or every table and field that is wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{source}: not valid TOML: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"[{'.'.join(str(x) for x in err['loc'])}] {err['msg']}" for err in exc.errors()
        )
        raise error(f"{source}: {problems}") from exc
