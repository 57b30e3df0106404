"""Host configuration: ``/etc/imgline/updater.toml`` (the ``[consumer_config]`` table when the
agent runs on the bus). Unknown keys are errors, so a typo never silently disables a policy."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from imgline.core import hostcheck
from imgline.schemas.payloads import HostId, ImageName, StreamName
from imgline.updater.domain.policy import parse_window
from imgline.updater.errors import UpdaterError

Policy = Literal["auto", "download-only", "manual", "disabled"]
BootLoader = Literal["grub", "grub-bls", "systemd-boot"]


class HealthConfig(BaseModel):
    """What a healthy boot means on this host (docs/updater.md, "Health checks")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    units: list[str] = Field(
        default_factory=list, description="systemd units that must be active (the payload)"
    )
    disk_max_percent: int = Field(
        default=hostcheck.DISK_MAX_PERCENT, ge=1, le=100, description="for / and /var"
    )
    thin_pool_max_percent: int = Field(default=90, ge=1, le=100)
    drop_in_dir: Path = Field(
        default=Path(hostcheck.DROP_IN_DIR), description="executables; each must exit 0"
    )
    check_timeout_seconds: float = Field(default=60.0, gt=0)
    settle_seconds: float = Field(
        default=120.0, ge=0, description="how long units may take to become active after boot"
    )

    @model_validator(mode="after")
    def _script_can_take_them(self) -> HealthConfig:
        """A unit name or directory the check script cannot take must stop the agent at start,
        not fail the first health check after an upgrade (and roll the host back)."""
        try:
            hostcheck.arguments(units=self.units, drop_in_dir=str(self.drop_in_dir))
        except hostcheck.HostCheckError as exc:
            raise ValueError(str(exc)) from exc
        return self


class LayoutConfig(BaseModel):
    """Names and sizes of what ``install`` makes; ``apply`` and ``install.ks`` share them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vg: str = Field(default="imgline", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    pool: str = Field(default="pool", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    boot_mib: int = Field(default=512, ge=64, description="the ESP, mounted at /boot")
    volumes: dict[str, int] = Field(
        default_factory=lambda: {"/var": 1024, "/var/log": 512, "/var/tmp": 256, "/home": 256},  # noqa: S108
        description="shared thin LVs (mount point → MiB), the same for every layer",
    )
    root_extra_mib: int = Field(
        default=1024, ge=0, description="free room added to each layer beyond the image's size"
    )


class HostConfig(BaseModel):
    """One host: which stream it follows, how it may update, what it keeps."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    __test__: ClassVar[bool] = False

    host_id: HostId | None = Field(default=None, description="default: /etc/machine-id")
    name: ImageName = "node"
    stream: StreamName = "stable"
    repository_url: str = Field(default="http://127.0.0.1:8090", pattern=r"^https?://")
    state_dir: Path = Field(
        default=Path("/var/lib/imgline"),
        description="state.json, the apply journal, downloads; tuf/ holds the pinned root",
    )
    policy: Policy = "auto"
    maintenance_windows: list[str] = Field(
        default_factory=list,
        description="e.g. 'Mon-Fri 02:00-04:00' (UTC); empty: any time",
    )
    rollout_percent: int = Field(default=100, ge=0, le=100)
    reboot_lock: Path = Field(
        default=Path("/run/imgline/reboot.lock"),
        description="while this file exists the agent never reboots",
    )
    keep_layers: int = Field(default=2, ge=2, description="layers kept, the running one included")
    refresh_interval_seconds: float = Field(
        default=3600.0, gt=0, description="pull fallback for hosts that missed a message"
    )
    boot_tries: int = Field(default=3, ge=1, le=9, description="boots a new layer gets")
    reboot: bool = Field(default=True, description="reboot into a new layer once it is applied")
    kernel_args: str = Field(
        default="console=tty0 console=ttyS0,115200 panic=10",
        pattern=r"^[^\n\x00']*$",
        description="added to every layer's boot entry after the image's own arguments",
    )
    layout: LayoutConfig = LayoutConfig()
    health: HealthConfig = HealthConfig()

    @field_validator("maintenance_windows")
    @classmethod
    def _windows_parse(cls, value: list[str]) -> list[str]:
        """A window that does not parse must stop the agent at start, not at the first reboot."""
        for text in value:
            try:
                parse_window(text)
            except UpdaterError as exc:
                raise ValueError(str(exc)) from exc
        return value

    @property
    def tuf_dir(self) -> Path:
        return self.state_dir / "tuf"
