"""``install.ks``: the kickstart that installs a release on bare metal with anaconda.

Anaconda's ``liveimg`` copies the image's root file system; the partitioning puts it where the
updater expects it (docs/architecture.md, Host layout): one volume group ``imgline`` on the
whole disk, a thin pool, the root as a thin LV named like the updater's first writable layer
(``<name>-<version>+1``) and ``/var``, ``/var/log``, ``/var/tmp`` and ``/home`` as thin LVs
shared by all later layers, with the names ``imgline-updater install`` gives them. The text is
validated with pykickstart before it is published, so a release never ships an install.ks
anaconda would refuse.

The installed host must trust exactly this repository: ``%post`` writes the repository's
root metadata (the TUF trust anchor, carried base64-encoded so no byte of it can end the
here-document) where the updater's client looks for it, and the updater's config (name, stream,
repository URL). ``installed.json`` tells ``imgline-updater adopt`` which release the root LV
holds (docs/updater.md, "Hosts installed by anaconda"). The install.ks itself is a signed
target of the stream's role.
"""

from __future__ import annotations

import base64
import io
import json
from contextlib import redirect_stderr

from pydantic import BaseModel, ConfigDict, Field

# pykickstart ships no type hints: these names are Any.
from pykickstart.errors import KickstartError  # type: ignore[import-untyped]
from pykickstart.parser import KickstartParser  # type: ignore[import-untyped]
from pykickstart.version import RHEL9, makeVersion  # type: ignore[import-untyped]

from imgline.publisher.errors import ReleaseError

VOLUME_GROUP = "imgline"
THIN_POOL = "pool"  # imgline-updater install names it the same (docs/updater.md)


class InstallLayout(BaseModel):
    """Sizes in MiB; the pool takes the rest of the disk, so the updater has room for layers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    root_mib: int = Field(default=6144, ge=1024)
    var_mib: int = Field(default=15360, ge=1024)
    var_log_mib: int = Field(default=4096, ge=256)
    var_tmp_mib: int = Field(default=1024, ge=256)
    home_mib: int = Field(default=1024, ge=256)
    timezone: str = "Etc/UTC"
    lang: str = "en_US.UTF-8"
    keyboard: str = "us"


def layer_name(name: str, version: str) -> str:
    """The updater's name for the first writable layer of a base image (imgbased style)."""
    return f"{name}-{version}+1"


TRUST_DIR = "/var/lib/imgline/tuf"
CONFIG_PATH = "/etc/imgline/updater.toml"  # where imgline-updater reads its config


def render(
    *,
    name: str,
    version: str,
    stream: str,
    image_url: str,
    sha256: str,
    repository_url: str,
    root_metadata: bytes,
    layout: InstallLayout,
) -> str:
    """The install.ks text of one release."""
    layer = layer_name(name, version)
    installed = json.dumps(
        {"name": name, "version": version, "sha256": sha256, "layer": layer, "stream": stream}
    )
    # TOML basic strings take JSON's escapes, so json.dumps quotes any value safely
    config = "\n".join(
        f"{key} = {json.dumps(value)}"
        for key, value in (("name", name), ("stream", stream), ("repository_url", repository_url))
    )
    root_b64 = base64.b64encode(root_metadata).decode("ascii")
    root_lines = "\n".join(root_b64[i : i + 76] for i in range(0, len(root_b64), 76))
    return f"""\
# imgline install kickstart for {name}-{version}: anaconda installs the signed image below
# onto LVM thin provisioning, laid out the way imgline-updater applies later releases.
text
lang {layout.lang}
keyboard {layout.keyboard}
timezone {layout.timezone} --utc
rootpw --lock
liveimg --url={image_url} --checksum={sha256}

zerombr
clearpart --all --initlabel
reqpart --add-boot
part pv.01 --size=1 --grow
volgroup {VOLUME_GROUP} pv.01
logvol none --vgname={VOLUME_GROUP} --thinpool --name={THIN_POOL} --size=1 --grow
logvol / --vgname={VOLUME_GROUP} --thin --poolname={THIN_POOL} --name={layer} --fstype=ext4 \
--size={layout.root_mib} --fsoptions=discard
logvol /var --vgname={VOLUME_GROUP} --thin --poolname={THIN_POOL} --name=var --fstype=ext4 \
--size={layout.var_mib} --fsoptions=discard
logvol /var/log --vgname={VOLUME_GROUP} --thin --poolname={THIN_POOL} --name=var_log \
--fstype=ext4 --size={layout.var_log_mib} --fsoptions=discard
logvol /var/tmp --vgname={VOLUME_GROUP} --thin --poolname={THIN_POOL} --name=var_tmp \
--fstype=ext4 --size={layout.var_tmp_mib} --fsoptions=discard
logvol /home --vgname={VOLUME_GROUP} --thin --poolname={THIN_POOL} --name=home --fstype=ext4 \
--size={layout.home_mib} --fsoptions=discard
bootloader --timeout=1
reboot

%post --erroronfail
# Tell imgline-updater which release this host was installed from (`imgline-updater adopt`,
# or the agent's first start, takes it over), where its repository is, and pin the
# repository's root metadata: the host trusts exactly this repository.
mkdir -p /var/lib/imgline {TRUST_DIR}/metadata {CONFIG_PATH.rsplit("/", 1)[0]}
cat > /var/lib/imgline/installed.json <<'JSON'
{installed}
JSON
umask 077
cat > {CONFIG_PATH} <<'TOML'
# imgline-updater on a host installed from {name}-{version}'s install.ks
[consumer_config]
{config}
TOML
base64 -d > {TRUST_DIR}/metadata/root.json <<'ROOT'
{root_lines}
ROOT
%end
"""


def validate(text: str, syntax: int = RHEL9) -> None:
    """Parse ``text`` as anaconda would; raise ``ReleaseError`` with the line on a problem."""
    handler = makeVersion(syntax)
    parser = KickstartParser(handler, missingIncludeIsFatal=True)
    try:
        with redirect_stderr(io.StringIO()):
            parser.readKickstartFromString(text)
    except KickstartError as exc:
        raise ReleaseError(f"generated install.ks is not valid kickstart: {exc}") from exc
    if not handler.liveimg.seen or not handler.liveimg.checksum:
        raise ReleaseError("generated install.ks has no liveimg --url/--checksum")
