"""Publisher settings: the ``[consumer_config]`` table of the service's TOML file."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import ConfigDict, Field

from imgline.core.fetch import ArtifactAccess
from imgline.core.trust.layout import Expiry
from imgline.publisher.domain.installks import InstallLayout
from imgline.publisher.domain.rollout import RolloutConfig


class PublisherConfig(ArtifactAccess):
    """Where the repository lives, how hosts reach it, what it keeps; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    __test__: ClassVar[bool] = False

    repo_dir: Path = Field(default=Path("/var/lib/imgline/repo"))
    store_dir: Path = Field(
        default=Path("/var/lib/imgline/artifacts"),
        description="the artifact store the tester writes its verdicts to; images are read "
        "from here by digest (docs/security.md)",
    )
    work_dir: Path = Field(
        default=Path("/var/lib/imgline/publisher-work"), description="downloads of remote artefacts"
    )
    base_url: str = Field(
        default="http://127.0.0.1:8090",
        pattern=r"^https?://",
        description="the repository as hosts and anaconda reach it",
    )
    keys_dir: Path = Field(
        default=Path("/etc/imgline/keys"),
        description="online keys (targets, snapshot, timestamp, streams); `imgline repo init`",
    )
    expiry: Expiry = Expiry()
    refresh_interval_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="how often the service re-signs what is due (the timestamp above all)",
    )
    keep: int = Field(default=3, ge=1, description="releases kept per image in each stream")
    keep_per_stream: dict[str, int] = Field(default_factory=dict)
    serve_host: str = "127.0.0.1"
    serve_port: int = Field(default=8090, ge=0, le=65535)
    install: InstallLayout = InstallLayout()
    rollout: RolloutConfig = Field(
        default_factory=RolloutConfig,
        description="staged waves of new releases and the automatic pause (docs/operations.md)",
    )
