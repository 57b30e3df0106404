"""Trigger settings: the ``[consumer_config]`` table of the service's TOML file."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from imgline.trigger.domain.forges import Forge


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
