"""install.ks: what anaconda gets, validated the way anaconda parses it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from imgline.publisher.domain.installks import InstallLayout, layer_name, render, validate
from imgline.publisher.errors import PublisherError

pytestmark = pytest.mark.unit

SHA = "ab" * 32
URL = f"http://repo.example/targets/stable/node/20261123.1/{SHA}.node-20261123.1.squashfs.img"
ROOT = b'{"signed": {"_type": "root", "note": "it\'s here\\nROOT\\n"}, "signatures": []}'


def make(name: str = "node", version: str = "20261123.1", **kw: object) -> str:
    args: dict[str, object] = {
        "stream": "stable",
        "image_url": URL,
        "sha256": SHA,
        "repository_url": "http://repo.example/",
        "root_metadata": ROOT,
        "layout": InstallLayout(),
    }
    args.update(kw)
    return render(name=name, version=version, **args)  # type: ignore[arg-type]


def test_rendered_kickstart_is_valid_and_installs_the_image_on_thin_lvm() -> None:
    text = make()
    validate(text)
    assert f"liveimg --url={URL} --checksum={SHA}" in text
    assert "--thinpool --name=pool " in text
    assert "logvol / --vgname=imgline --thin --poolname=pool --name=node-20261123.1+1" in text
    assert "logvol /var --vgname=imgline --thin" in text
    assert '"layer": "node-20261123.1+1"' in text


def test_layout_sizes_are_used() -> None:
    layout = InstallLayout(root_mib=8192, var_mib=4096, timezone="Europe/Prague")
    text = make("a", "1", layout=layout)
    validate(text)
    assert "--size=8192" in text and "--size=4096" in text
    assert "timezone Europe/Prague --utc" in text


def test_post_pins_the_root_byte_for_byte(tmp_path: Path) -> None:
    """The %post script, run by a shell, writes exactly the root it was given (quotes,
    backslashes and a line that would end a naive here-document included)."""
    text = make()
    post = text.split("%post --erroronfail\n", 1)[1].split("%end", 1)[0]
    script = post.replace("/var/lib/imgline", str(tmp_path)).replace(
        "/etc/imgline", str(tmp_path / "etc")
    )
    subprocess.run(["sh", "-e", "-c", script], check=True)
    assert (tmp_path / "tuf" / "metadata" / "root.json").read_bytes() == ROOT
    config = tmp_path / "etc" / "updater.toml"
    assert config.stat().st_mode & 0o077 == 0  # no one but root reads the host's config
    assert 'repository_url = "http://repo.example/"' in config.read_text()
    installed = json.loads((tmp_path / "installed.json").read_text())
    assert installed["layer"] == "node-20261123.1+1" and installed["sha256"] == SHA


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
