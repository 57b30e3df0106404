"""What a build must produce, independent of the backend that makes it.

The kickstart parser fills a ``BuildPlan``; a backend turns it into a root file system. Keeping
the plan a plain value makes "kickstart → plan" and "plan → command line" testable by table.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PlanModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RootPassword(PlanModel):
    """``rootpw``: locked (no password login), a plain password, or an already-crypted hash."""

    locked: bool = False
    password: str | None = None
    crypted: bool = False


class User(PlanModel):
    """``user``: an account created in the image."""

    name: str
    password: str | None = None
    crypted: bool = False
    locked: bool = False
    groups: tuple[str, ...] = ()
    uid: int | None = None
    gid: int | None = None
    homedir: str | None = None
    shell: str | None = None
    gecos: str | None = None


class Script(PlanModel):
    """A ``%post`` (or ``%pre``) section: run with its interpreter, in the image or on the host."""

    body: str
    interpreter: str = "/bin/sh"
    chroot: bool = True
    error_on_fail: bool = False
    lineno: int = Field(ge=1, description="kickstart line of the %post header")
    logfile: str | None = None
    where: str = Field(default="", description="file:line of the header, for messages")


class RootFs(PlanModel):
    """``part /``: the size and type of the image's root file system."""

    size_mib: int | None = Field(
        default=None, gt=0, description="None: the content's size plus the builder's headroom"
    )
    fstype: Literal["ext4"] = "ext4"
    fsoptions: str | None = None
    label: str | None = None


class Group(PlanModel):
    """``group``: a group created in the image (before the users that may join it)."""

    name: str
    gid: int | None = None


class SshKey(PlanModel):
    """``sshkey``: a public key authorized for ``user`` (an account the image has)."""

    user: str
    key: str
    lineno: int = Field(ge=1, description="kickstart line, for the error if the user is missing")


class Repo(PlanModel):
    """``url`` / ``repo``: where packages come from (a Debian mirror for mmdebstrap). Exactly
    one of ``baseurl``, ``mirrorlist`` and ``metalink``; the lists are dnf's (lorax backend)."""

    name: str
    baseurl: str | None = None
    mirrorlist: str | None = None
    metalink: str | None = None
    where: str = Field(default="", description="file:line of the kickstart line, for messages")

    @model_validator(mode="after")
    def _one_source(self) -> Repo:
        given = [u for u in (self.baseurl, self.mirrorlist, self.metalink) if u is not None]
        if len(given) != 1:
            raise ValueError("a repository has exactly one of baseurl, mirrorlist and metalink")
        return self


class BuildPlan(PlanModel):
    """Everything a backend needs, taken from the kickstart; nothing backend-specific."""

    packages: tuple[str, ...] = ()
    excluded_packages: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    packages_where: str = Field(default="", description="file:line of the %packages header")
    exclude_docs: bool = Field(default=False, description="%packages --excludedocs")
    ignore_missing: bool = Field(default=False, description="%packages --ignoremissing")
    nocore: bool = Field(default=False, description="%packages --nocore")
    inst_langs: tuple[str, ...] | None = Field(
        default=None, description="%packages --inst-langs: the only translations kept"
    )
    exclude_weakdeps: bool = Field(default=False, description="%packages --exclude-weakdeps")
    lang: str = "en_US.UTF-8"
    keyboard: str = "us"
    timezone: str = "Etc/UTC"
    timezone_utc: bool = True
    root_password: RootPassword = RootPassword(locked=True)
    users: tuple[User, ...] = ()
    user_groups: tuple[Group, ...] = ()
    ssh_keys: tuple[SshKey, ...] = ()
    kernel_args: tuple[str, ...] = Field(
        default=(), description="bootloader --append: into image.json, for the boot entries"
    )
    services_enabled: tuple[str, ...] = ()
    services_disabled: tuple[str, ...] = ()
    selinux: Literal["enforcing", "permissive", "disabled"] | None = None
    hostname: str | None = None
    rootfs: RootFs
    mirror: Repo | None = None
    repos: tuple[Repo, ...] = ()
    pre: tuple[Script, ...] = ()
    post: tuple[Script, ...] = ()
    warnings: tuple[str, ...] = Field(
        default=(), description="deprecations and ignored commands, for the build log"
    )
