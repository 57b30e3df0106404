"""``imgline keys``: generate and show agree, and problems exit 2 with a readable message."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgline.core import cli
from imgline.core.signing import parse_public_key

pytestmark = pytest.mark.unit


def public_lines(out: str) -> tuple[str, str]:
    lines = out.splitlines()
    (id_line,) = [line for line in lines if line.startswith("key id: ")]
    (public,) = [line for line in lines if line.startswith("ed25519:")]
    return id_line.removeprefix("key id: "), public


def test_generate_then_show_print_the_same_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys" / "signing.pem"
    assert cli.main(["keys", "generate", str(path)]) == 0
    generated = public_lines(capsys.readouterr().out)
    assert cli.main(["keys", "show", str(path)]) == 0
    shown = public_lines(capsys.readouterr().out)
    assert generated == shown
    kid, public = shown
    assert len(kid) == 16
    parse_public_key(public)


def test_generate_twice_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "signing.pem"
    assert cli.main(["keys", "generate", str(path)]) == 0
    capsys.readouterr()
    assert cli.main(["keys", "generate", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "refusing to overwrite" in captured.err


def test_show_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.pem"
    assert cli.main(["keys", "show", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("imgline: no signing key at ")
    assert str(path) in captured.err


def test_keys_needs_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["keys"])
    assert info.value.code == 2
