"""Hosts installed by anaconda (the published install.ks) and by ``imgline-updater install``
get the same LVM layout, so the updater upgrades both the same way."""

from __future__ import annotations

import re

import pytest

from imgline.publisher.domain.installks import InstallLayout, render
from imgline.updater.install import volume_lv
from imgline.updater.settings import LayoutConfig

pytestmark = pytest.mark.unit


def test_install_ks_makes_the_updaters_volume_group_pool_and_volumes() -> None:
    text = render(
        name="node",
        version="20261201.1",
        stream="stable",
        image_url="http://repo/targets/x.img",
        sha256="0" * 64,
        repository_url="http://repo",
        root_metadata=b"{}",
        layout=InstallLayout(),
    )
    text = text.replace("\\\n", "")
    layout = LayoutConfig()
    logvols = dict(re.findall(r"^logvol (\S+) .*--name=(\S+)", text, re.MULTILINE))
    assert f"--vgname={layout.vg}" in text
    assert f"--thinpool --name={layout.pool} " in text
    assert logvols.pop("/") == "node-20261201.1+1"
    assert logvols.pop("none") == layout.pool
    assert logvols == {point: volume_lv(point) for point in layout.volumes}
