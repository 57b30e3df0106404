"""Trigger settings: the ``[consumer_config]`` table of the service's TOML file."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from imgline.core.config import amqp_scheme, check_tls
from imgline.trigger.domain.busevents import BusFormat
from imgline.trigger.domain.forges import Forge

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,200}$"
_KEY = r"^[A-Za-z0-9*#][A-Za-z0-9._*#-]{0,254}$"


class ForgeBusConfig(BaseModel):
    """``[consumer_config.forge_bus]``: where forges announce pushes on a message bus. A
    message there is not signed: it is trusted because only this queue, on a broker the
    operator controls, is read (docs/security.md, "Push messages on a bus")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: BusFormat = Field(description="pagure, distgit, or a forge's relayed webhook body")
    amqp_url: str | None = Field(
        default=None, description="the forge's broker, as its own user; unset: the pipeline's"
    )
    exchange: str = Field(pattern=_NAME, description="where the forge publishes (must exist)")
    queue: str = Field(pattern=_NAME, description="the trigger's own queue for these messages")
    routing_keys: tuple[str, ...] = Field(
        min_length=1, description="topics to bind, e.g. io.pagure.prod.pagure.git.receive"
    )
    dead_letter_exchange: str | None = Field(
        default=None,
        pattern=_NAME,
        description="on the forge's broker: unusable messages go there with the reason",
    )
    declare: bool = Field(
        default=True, description="declare and bind the queue; false: it must exist"
    )
    prefetch: int = Field(default=10, ge=1, le=1000)
    max_body_bytes: int = Field(default=1 << 20, gt=0, description="larger: dead-lettered")
    tls_ca_cert: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @field_validator("routing_keys")
    @classmethod
    def _keys(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        for key in keys:
            if not re.fullmatch(_KEY, key):
                raise ValueError(f"routing key {key[:80]!r} is not an AMQP topic binding key")
        return keys

    @field_validator("amqp_url")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        return amqp_scheme(value)

    @model_validator(mode="after")
    def _tls(self) -> ForgeBusConfig:
        check_tls(self.amqp_url, self.tls_ca_cert, self.tls_cert, self.tls_key)
        if (self.tls_ca_cert or self.tls_cert) and self.amqp_url is None:
            raise ValueError("tls_* of forge_bus need its own amqp_url (amqps://)")
        return self


class TriggerConfig(BaseModel):
    """Where the webhook listens, the rules, and each forge's secret; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen_host: str = Field(default="127.0.0.1", description="put a TLS proxy in front")
    listen_port: int = Field(default=8470, ge=0, le=65535, description="0: any free port")
    rules_file: Path = Field(default=Path("/etc/imgline/trigger-rules.toml"))
    secret_files: dict[Forge, Path] = Field(
        default_factory=dict,
        description="a file holding each forge's webhook secret; a forge without one is refused",
    )
    max_body_bytes: int = Field(
        default=25 << 20, gt=0, description="larger events get 413 (GitHub caps at 25 MB)"
    )
    repeat_window_seconds: float = Field(
        default=3600.0, ge=0, description="a push delivered again within this is not requested"
    )
    repeat_memory: int = Field(default=10_000, ge=1)
    forge_bus: ForgeBusConfig | None = Field(
        default=None, description="push messages from a bus, alongside the webhook; unset: none"
    )
