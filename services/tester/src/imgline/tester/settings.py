"""Tester settings: the ``[consumer_config]`` table of the service's TOML file."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field

from imgline.core.fetch import ArtifactAccess


class TesterConfig(ArtifactAccess):
    """Where the tester keeps things and how it boots; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    __test__: ClassVar[bool] = False  # not a pytest class

    store_dir: Path = Field(
        default=Path("/var/lib/imgline/artifacts"),
        description="images are read, and reports and logs written, only under it",
    )
    work_dir: Path = Field(default=Path("/var/lib/imgline/tester-work"))
    plan_file: Path | None = Field(default=None, description="TOML test plan; default: built in")
    accel: Literal["tcg", "kvm"] = "tcg"
    keep_workdir: bool = False
