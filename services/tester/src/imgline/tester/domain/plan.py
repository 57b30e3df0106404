"""The declarative test plan: what an image must contain, per stream and per image.

The plan is TOML so a vendor keeps it beside their kickstarts. Tables are layered from the
general to the specific, and lists add up, so a rule in ``[defaults]`` cannot be dropped by a
stream or an image by mistake::

    [defaults]                 # every image
    [streams.<stream>]         # every image built for that stream
    [images.<name>]            # one image, any stream
    [images.<name>.streams.<stream>]

Booting settings (``[... .boot]``) are single values instead: the most specific table that sets
one wins.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from imgline.core.config import parse_toml
from imgline.tester.errors import PlanError

_PACKAGE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9+._-]*)\s*(?:>=\s*([A-Za-z0-9.+~:^_-]+))?\s*$")
_GLOB = re.compile(r"[*?\[]")
_UNIT_SUFFIXES = (".service", ".socket", ".timer", ".path", ".mount", ".target")

Timeout = Annotated[int, Field(gt=0, le=7200)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PackageRule(_Strict):
    """A package the image must have, optionally at a minimum version."""

    name: str
    min_version: str | None = None

    @classmethod
    def parse(cls, spec: str) -> PackageRule:
        """``"openssh-server"`` or ``"python3 >= 3.11"``."""
        m = _PACKAGE.match(spec)
        if m is None:
            raise ValueError(f"package rule {spec!r} is not 'name' or 'name >= version'")
        return cls(name=m.group(1), min_version=m.group(2))

    def __str__(self) -> str:
        return self.name + (f" >= {self.min_version}" if self.min_version else "")


class BootPlan(_Strict):
    """How to boot the image and what proves that it is up."""

    enabled: bool = True
    marker: str = Field(default="Reached target multi-user.target", min_length=1)
    timeout_seconds: Timeout = 600
    memory_mib: int = Field(default=1536, ge=256, le=16384)
    extra_kernel_args: str = ""
    http_port: int | None = Field(
        default=None, ge=1, le=65535, description="the guest port whose answer must be image.json"
    )
    http_path: str = Field(default="/", pattern=r"^/[A-Za-z0-9._~/-]*$")


class BootOverrides(_Strict):
    """A ``boot`` table: only what it sets overrides the less specific tables."""

    enabled: bool | None = None
    marker: str | None = Field(default=None, min_length=1)
    timeout_seconds: Timeout | None = None
    memory_mib: int | None = Field(default=None, ge=256, le=16384)
    extra_kernel_args: str | None = None
    http_port: int | None = Field(default=None, ge=1, le=65535)
    http_path: str | None = Field(default=None, pattern=r"^/[A-Za-z0-9._~/-]*$")


def has_wildcard(path: str) -> bool:
    """Whether a plan path is a pattern (fnmatch: ``*``, ``?``, ``[...]``)."""
    return _GLOB.search(path) is not None


def _check_path(value: str) -> str:
    path = PurePosixPath(value)
    if not path.is_absolute() or ".." in path.parts:
        raise ValueError(f"{value!r} must be an absolute path inside the image, without '..'")
    if any(has_wildcard(part) for part in path.parts[:-1]):
        raise ValueError(f"{value!r}: wildcards are allowed in the last component only")
    return str(path)


class Rules(_Strict):
    """One table of the plan."""

    packages: list[str] = Field(default_factory=list, description="'name' or 'name >= version'")
    required_files: list[str] = Field(default_factory=list)
    forbidden_files: list[str] = Field(default_factory=list)
    services: list[str] = Field(default_factory=list, description="units that must be enabled")
    image_json: bool | None = Field(default=None, description="check image.json vs the message")
    boot: BootOverrides = BootOverrides()

    @field_validator("packages")
    @classmethod
    def _packages(cls, value: list[str]) -> list[str]:
        for spec in value:
            PackageRule.parse(spec)
        return value

    @field_validator("required_files", "forbidden_files")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        return [_check_path(v) for v in value]

    @field_validator("services")
    @classmethod
    def _services(cls, value: list[str]) -> list[str]:
        units = []
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9:_.@\\-]+", name):
                raise ValueError(f"{name!r} is not a systemd unit name")
            units.append(name if name.endswith(_UNIT_SUFFIXES) else f"{name}.service")
        return units


class ImageRules(Rules):
    """``[images.<name>]``, which may have per-stream tables of its own."""

    streams: dict[str, Rules] = Field(default_factory=dict)


class TestPlanFile(_Strict):
    """The whole plan file as written."""

    __test__ = False

    defaults: Rules = Rules()
    streams: dict[str, Rules] = Field(default_factory=dict)
    images: dict[str, ImageRules] = Field(default_factory=dict)


class Expectations(_Strict):
    """What one image (name, stream) is checked against: the plan's tables merged."""

    packages: tuple[PackageRule, ...] = ()
    required_files: tuple[str, ...] = ()
    forbidden_files: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    image_json: bool = True
    boot: BootPlan = BootPlan()


def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def resolve(plan: TestPlanFile, name: str, stream: str) -> Expectations:
    """Merge the tables that apply to image ``name`` on ``stream``, general to specific."""
    layers: list[Rules] = [plan.defaults]
    if stream in plan.streams:
        layers.append(plan.streams[stream])
    image = plan.images.get(name)
    if image is not None:
        layers.append(image)
        if stream in image.streams:
            layers.append(image.streams[stream])
    packages: dict[str, PackageRule] = {}
    for layer in layers:
        for spec in layer.packages:
            rule = PackageRule.parse(spec)
            packages[rule.name] = rule  # a more specific table may raise or lower a minimum
    image_json = True
    boot: dict[str, object] = {}
    for layer in layers:
        if layer.image_json is not None:
            image_json = layer.image_json
        boot.update(layer.boot.model_dump(exclude_none=True))
    return Expectations(
        packages=tuple(packages.values()),
        required_files=_unique([f for layer in layers for f in layer.required_files]),
        forbidden_files=_unique([f for layer in layers for f in layer.forbidden_files]),
        services=_unique([s for layer in layers for s in layer.services]),
        image_json=image_json,
        boot=BootPlan.model_validate(boot),
    )


def load_plan(text: str, source: str = "<test plan>") -> TestPlanFile:
    """Parse and validate a plan; errors name the file, line (TOML) or table and field."""
    return parse_toml(text, TestPlanFile, source, PlanError)


#: Used when the tester's config names no plan: what any imgline host image needs.
DEFAULT_PLAN_TOML = """\
# imgline's built-in test plan: what every host image needs, whatever it is for.
[defaults]
image_json = true
packages = ["systemd"]
required_files = ["/usr/lib/imgline/image.json", "/usr/lib/os-release", "/usr/share/factory/etc"]
# Host keys baked into an image would be shared by every host that installs it.
forbidden_files = ["/etc/ssh/ssh_host_*_key"]

[defaults.boot]
enabled = true
marker = "Reached target multi-user.target"
timeout_seconds = 600
"""


def default_plan() -> TestPlanFile:
    return load_plan(DEFAULT_PLAN_TOML, "<built-in test plan>")
