"""livemedia-creator: the exact command line, and a clear refusal where lorax is missing.

The backend itself only runs on Fedora/EL builders; this Debian CI checks what can be checked
here (the real refusal is exercised in tests/image/test_build_handler.py).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from imgline.builder.adapters.lorax import LoraxBackend, lmc_command
from imgline.builder.domain.plan import BuildPlan, RootFs
from imgline.builder.errors import BackendError, BackendUnavailableError

pytestmark = pytest.mark.unit


def test_command_line() -> None:
    assert lmc_command(Path("/w/kickstart.flat.ks"), Path("/w")) == [
        "livemedia-creator",
        "--make-fsimage",
        "--no-virt",
        "--ks=/w/kickstart.flat.ks",
        "--image-name=rootfs.img",
        "--resultdir=/w/lmc",
        "--tmp=/w/lmc-tmp",
        "--logfile=/w/livemedia-creator.log",
    ]


def test_missing_lorax_is_refused_with_advice(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BackendUnavailableError, match=r"dnf install lorax.*backend 'mmdebstrap'"):
        LoraxBackend(60).check_available()


def test_a_kickstart_without_a_root_size_is_refused_before_lmc_runs(tmp_path: Path) -> None:
    plan = BuildPlan(rootfs=RootFs())
    with pytest.raises(BackendError, match=r"add that line"):
        LoraxBackend(60).build(plan, tmp_path / "ks", tmp_path, io.StringIO())


def test_the_configured_releasever_reaches_dnf() -> None:
    assert lmc_command(Path("/w/k.ks"), Path("/w"), "40")[-1] == "--releasever=40"
