"""Ledger settings: the ``[consumer_config]`` table of the service's TOML file."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class LedgerConfig(BaseModel):
    """Where the events are kept; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    db_path: Path = Field(
        default=Path("/var/lib/imgline/ledger/ledger.sqlite3"),
        description="the SQLite file; imgline status reads it (--ledger)",
    )
    unfinished_window_seconds: float = Field(
        default=7 * 86400.0,
        gt=0,
        description="a request older than this no longer counts as a build in progress",
    )
