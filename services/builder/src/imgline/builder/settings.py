"""Builder settings: the ``[consumer_config]`` table of the service's TOML file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from imgline.builder.domain.debian import BuildMode

#: Transports a build may fetch a kickstart over. git's others (``ext::``, ``fd::``) run
#: commands or reach outside the network and are never allowed.
GitScheme = Literal["https", "http", "ssh", "git", "file"]


class BuilderConfig(BaseModel):
    """Where the builder keeps things and how it builds; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @property
    def variables(self) -> dict[str, str]:
        """What the kickstart's ``$releasever`` and ``$basearch`` stand for."""
        return {
            "basearch": self.basearch,
            **({"releasever": self.releasever} if self.releasever else {}),
        }

    store_dir: Path = Field(default=Path("/var/lib/imgline/artifacts"))
    work_dir: Path = Field(default=Path("/var/lib/imgline/builder-work"))
    cache_dir: Path = Field(
        default=Path("/var/cache/imgline/apt"), description="downloaded .debs, kept between builds"
    )
    root_cache_dir: Path = Field(
        default=Path("/var/cache/imgline/roots"),
        description="package roots kept between builds (one tarball per package set)",
    )
    root_cache_mib: int = Field(
        default=8192, ge=0, description="size bound of root_cache_dir; 0 keeps no roots"
    )
    root_cache_max_age_hours: float = Field(
        default=24.0,
        gt=0,
        description="a kept root older than this is installed again, so mirror updates "
        "(security fixes) reach images within this time",
    )
    suite: str = Field(default="bookworm", pattern=r"^[a-z][a-z0-9-]*$")
    mirror: str | None = Field(default=None, description="Debian mirror; default: mmdebstrap's")
    syntax: str = Field(default="RHEL9", description="kickstart syntax version to validate against")
    compression: Literal["zstd", "xz"] = "zstd"
    compression_level: int | None = Field(
        default=None,
        description="zstd level of the squashfs (1-22); default 6, mksquashfs's own is 15: "
        "about 6 % smaller images for 10 times the time",
    )
    build_timeout_seconds: int = Field(default=7200, gt=0)
    keep_workdir: bool = Field(default=False, description="keep the root tree after a build")
    rootfs_headroom_mib: int = Field(
        default=256,
        ge=0,
        le=1 << 20,
        description="free space an image gets beyond its content when the kickstart gives no "
        "part / --size",
    )
    releasever: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="$releasever in the kickstart's url/repo lines (e.g. 40 for Fedora 40)",
    )
    basearch: str = Field(
        default="x86_64",
        pattern=r"^[A-Za-z0-9_-]{1,32}$",
        description="$basearch in the kickstart's url/repo lines",
    )
    build_mode: BuildMode = Field(
        default="unshare",
        description="unshare: mmdebstrap builds in a user namespace, so kickstart scripts run as "
        "root there, never as the host's root; root: as the host's root (trusted kickstarts "
        "only)",
    )
    build_user: str | None = Field(
        default=None,
        pattern=r"^[a-z_][a-z0-9_-]{0,31}$",
        description="the unprivileged account unshare-mode builds run as when the builder runs "
        "as root (it needs 65536 ids in /etc/subuid and /etc/subgid); unset: the builder's own "
        "user",
    )
    allow_host_scripts: bool = Field(
        default=False,
        description="run %pre and %post --nochroot scripts: they run on the build host, not "
        "in the image, so only for kickstarts from people trusted with this host",
    )
    git_schemes: tuple[GitScheme, ...] = Field(
        default=("https", "ssh", "git"),
        min_length=1,
        description="URL schemes a request's git source may use; add 'file' to build from "
        "repositories on this machine (the demo and the tests do)",
    )
