"""Tester settings: the ``[consumer_config]`` table of the service's TOML file."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from imgline.core.fetch import ArtifactSources


class TesterConfig(BaseModel):
    """Where the tester keeps things and how it boots; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    __test__: ClassVar[bool] = False  # not a pytest class

    store_dir: Path = Field(
        default=Path("/var/lib/imgline/artifacts"), description="reports and logs go here"
    )
    work_dir: Path = Field(default=Path("/var/lib/imgline/tester-work"))
    plan_file: Path | None = Field(default=None, description="TOML test plan; default: built in")
    accel: Literal["tcg", "kvm"] = "tcg"
    keep_workdir: bool = False
    artifact_url_prefixes: list[str] = Field(
        default_factory=list,
        description="http(s) URL prefixes images may be downloaded from; files are read only "
        "under store_dir (docs/security.md)",
    )
    download_deadline_seconds: float = Field(
        default=1800.0, gt=0, description="a download that takes longer is given up and retried"
    )

    def artifact_sources(self) -> ArtifactSources:
        return ArtifactSources.of([self.store_dir], self.artifact_url_prefixes)
