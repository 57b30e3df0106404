"""A layer's kernel command line: what the initramfs activates before the root is mounted."""

from __future__ import annotations

import pytest

from imgline.updater.apply import layer_options

pytestmark = pytest.mark.unit


def test_the_initramfs_activates_the_root_and_every_shared_volume() -> None:
    """The shared volumes come up with the root: the booted system does not wait for lvm's
    event activation to find them (on a loaded machine it now and then never did)."""
    options = layer_options("imgline", "node-1+1", "quiet", "console=ttyS0", ["var_log", "var"])
    assert options == (
        "root=/dev/imgline/node-1+1 rd.lvm.lv=imgline/node-1+1 rd.lvm.lv=imgline/var "
        "rd.lvm.lv=imgline/var_log rw quiet console=ttyS0"
    )


def test_a_host_without_shared_volumes_names_only_its_root() -> None:
    assert layer_options("vg0", "os-2+1", "", "") == "root=/dev/vg0/os-2+1 rd.lvm.lv=vg0/os-2+1 rw"
