"""Hosts installed by anaconda (the published install.ks) and by ``imgline-updater install``
get the same LVM layout, so the updater upgrades both the same way."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from imgline.publisher.domain.installks import InstallLayout, render
from imgline.updater.__main__ import load
from imgline.updater.adopt import Installed
from imgline.updater.install import volume_lv
from imgline.updater.settings import LayoutConfig

pytestmark = pytest.mark.unit


def install_ks(stream: str = "stable", repository_url: str = "http://repo") -> str:
    return render(
        name="node",
        version="20261201.1",
        stream=stream,
        image_url="http://repo/targets/x.img",
        sha256="0" * 64,
        repository_url=repository_url,
        root_metadata=b"{}",
        layout=InstallLayout(),
    )


def test_install_ks_makes_the_updaters_volume_group_pool_and_volumes() -> None:
    text = install_ks().replace("\\\n", "")
    layout = LayoutConfig()
    logvols = dict(re.findall(r"^logvol (\S+) .*--name=(\S+)", text, re.MULTILINE))
    assert f"--vgname={layout.vg}" in text
    assert f"--thinpool --name={layout.pool} " in text
    assert logvols.pop("/") == "node-20261201.1+1"
    assert logvols.pop("none") == layout.pool
    assert logvols == {point: volume_lv(point) for point in layout.volumes}


def test_install_ks_leaves_a_config_the_updater_reads(tmp_path: Path) -> None:
    """%post run by a shell writes an updater.toml that the updater accepts as it is, with a
    hostile-looking repository URL quoted, not interpreted."""
    url = 'http://repo.example/a"b\\c$(touch pwned)'
    post = install_ks("edge", url).split("%post --erroronfail\n", 1)[1].split("%end", 1)[0]
    script = post.replace("/var/lib/imgline", str(tmp_path / "var")).replace(
        "/etc/imgline", str(tmp_path / "etc")
    )
    subprocess.run(["sh", "-e", "-c", script], check=True, cwd=tmp_path)
    assert not (tmp_path / "pwned").exists()
    _bus, config, _text = load(tmp_path / "etc" / "updater.toml")
    assert (config.name, config.stream, config.repository_url) == ("node", "edge", url)
    installed = Installed.model_validate_json((tmp_path / "var" / "installed.json").read_bytes())
    assert installed.layer == "node-20261201.1+1" and installed.stream == "edge"
