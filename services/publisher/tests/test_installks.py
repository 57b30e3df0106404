"""install.ks: what anaconda gets, validated the way anaconda parses it."""

from __future__ import annotations

import pytest

from imgline.publisher.domain.installks import InstallLayout, layer_name, render, validate
from imgline.publisher.errors import PublisherError

pytestmark = pytest.mark.unit

URL = "http://repo.example/images/node/20261123.1/node-20261123.1.squashfs.img"
SHA = "ab" * 32


def test_rendered_kickstart_is_valid_and_installs_the_image_on_thin_lvm() -> None:
    text = render(
        name="node", version="20261123.1", image_url=URL, sha256=SHA, layout=InstallLayout()
    )
    validate(text)
    assert f"liveimg --url={URL} --checksum={SHA}" in text
    assert "--thinpool --name=pool00" in text
    assert "logvol / --vgname=imgline --thin --poolname=pool00 --name=node-20261123.1+1" in text
    assert "logvol /var --vgname=imgline --thin" in text
    assert '"layer": "node-20261123.1+1"' in text


def test_layout_sizes_are_used() -> None:
    layout = InstallLayout(root_mib=8192, var_mib=4096, timezone="Europe/Prague")
    text = render(name="a", version="1", image_url=URL, sha256=SHA, layout=layout)
    validate(text)
    assert "--size=8192" in text and "--size=4096" in text
    assert "timezone Europe/Prague --utc" in text


def test_layer_name_matches_the_updater_convention() -> None:
    assert layer_name("node", "1.2") == "node-1.2+1"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("liveimg --checksum=abc\n", "not valid kickstart"),
        ("logvol / --thin\n", "not valid kickstart"),
        ("text\nlang en_US.UTF-8\n", "no liveimg"),
    ],
)
def test_invalid_kickstart_is_refused(text: str, fragment: str) -> None:
    with pytest.raises(PublisherError, match=fragment):
        validate(text)
