"""The builder's handler with real assembly, store and git, and a stand-in root tree.

The stand-in backend writes a tiny tree (a fake kernel and initramfs) instead of running
mmdebstrap, so every handler path runs in seconds; test_builder_e2e.py is its real twin.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pytest
from fedora_messaging import message as fm_message
from prometheus_client import CollectorRegistry

from imgline.builder.adapters import sources
from imgline.builder.adapters.lorax import LoraxBackend
from imgline.builder.domain.plan import BuildPlan
from imgline.builder.errors import SourceError
from imgline.builder.handlers import BuildMetrics, build_handler
from imgline.builder.ports import Backend, BuildOutput
from imgline.builder.settings import BuilderConfig
from imgline.core import liveimg
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.gitutil import commit_files
from imgline.schemas import payloads as p
from imgline.schemas.messages import BuildFailedV1, BuildRequestedV1, ImageBuiltV1

pytestmark = pytest.mark.image

KS = """lang en_US.UTF-8
timezone --utc Etc/UTC
rootpw --lock
part / --size=64 --fstype=ext4
%packages
linux-image-cloud-amd64
%end
"""


class TreeBackend:
    """Writes a minimal root tree shaped like a real one."""

    name = "mmdebstrap"

    def __init__(self) -> None:
        self.calls = 0
        self.plans: list[BuildPlan] = []

    def check_available(self) -> None:
        return None

    def build(self, plan: BuildPlan, kickstart: Path, workdir: Path, log: IO[str]) -> BuildOutput:
        self.calls += 1
        self.plans.append(plan)
        root = workdir / "root"
        for d in ("boot", "etc", "usr/bin"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "boot/vmlinuz-6.1.0-test").write_bytes(b"kernel")
        (root / "boot/initrd.img-6.1.0-test").write_bytes(b"initrd")
        (root / "etc/hostname").write_text("node\n")
        (root / "usr/bin/payload").write_text("#!/bin/sh\necho hi\n")
        log.write("tree written\n")
        return BuildOutput(tree=root)


class Harness:
    def __init__(self, tmp: Path, backends: dict[str, Backend] | None = None) -> None:
        self.sent: list[fm_message.Message] = []
        self.backend = TreeBackend()
        self.store = LocalArtifactStore(tmp / "store")
        self.handler = build_handler(
            BuilderConfig(
                store_dir=tmp / "store",
                work_dir=tmp / "work",
                cache_dir=tmp / "c",
                git_schemes=("file",),  # the vendor repositories here are local
            ),
            self.store,
            backends or {"mmdebstrap": self.backend},
            publish=self.sent.append,
            topic_prefix="imgline",
            metrics=BuildMetrics(CollectorRegistry()),
            clock=lambda: datetime(2026, 11, 23, 12, 0, tzinfo=UTC),
        )

    def build(self, **fields: Any) -> fm_message.Message:
        fields.setdefault("request_id", "r1")
        fields.setdefault("name", "node")
        fields.setdefault("source", p.InlineSource(kickstart=KS))
        req = p.BuildRequested(**fields)
        before = len(self.sent)
        self.handler(BuildRequestedV1.from_payload(req))
        assert len(self.sent) == before + 1
        msg = self.sent[-1]
        msg.validate()
        return msg


def test_inline_kickstart_becomes_a_stored_liveimg(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    msg = h.build()
    assert isinstance(msg, ImageBuiltV1)
    built = msg.payload
    assert (built.name, built.version, built.stream) == ("node", "20261123.1", "main")
    assert built.source_commit is None
    stored = h.store.path_for(built.artifact.sha256)
    assert stored.stat().st_size == built.artifact.size
    assert h.store.verify(built.artifact.sha256)
    rootfs = liveimg.extract_rootfs(stored, tmp_path / "x")
    liveimg.fsck(rootfs)
    meta = json.loads(liveimg.read_file(rootfs, "/usr/lib/imgline/image.json"))
    assert meta["version"] == "20261123.1"
    assert meta["build_id"] == built.build_id
    assert meta["kernel"] == "/boot/vmlinuz-6.1.0-test"
    assert meta["initrd"] == "/boot/initrd.img-6.1.0-test"
    assert liveimg.read_file(rootfs, "/usr/share/factory/etc/hostname") == b"node\n"
    assert built.log_url and built.log_url.startswith("file://")
    log_text = h.store.read_record("logs", f"{built.build_id}.log")
    assert log_text is not None and b"tree written" in log_text
    assert not (tmp_path / "work" / built.build_id).exists()  # work dir cleaned up


def test_same_request_is_not_built_twice_and_versions_count_up(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    first = h.build()
    again = h.build(request_id="r1-again")
    assert h.backend.calls == 1
    assert again.body == {**first.body, "request_id": "r1-again"}  # answers its own request
    other = h.build(stream="testing")
    assert other.payload.version == "20261123.2"
    pinned = h.build(version="1.0", stream="lts")
    assert pinned.payload.version == "1.0"
    clash = h.build(version="1.0", stream="other")
    assert isinstance(clash, BuildFailedV1)
    assert "version 1.0 of node was already built" in clash.payload.error


def test_bad_kickstart_fails_with_the_line_number(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    msg = h.build(source=p.InlineSource(kickstart="lang en_US.UTF-8\n\npartt / --size=10\n"))
    assert isinstance(msg, BuildFailedV1)
    failed = msg.payload
    assert (failed.stage, failed.kickstart_line) == ("parse", 3)
    assert "partt" in failed.error
    assert h.backend.calls == 0
    log = h.store.read_record("logs", f"{failed.build_id}.log")
    assert log is not None and b"FAILED in parse" in log


def test_livemedia_creator_off_fedora_fails_clearly(tmp_path: Path) -> None:
    h = Harness(tmp_path, {"livemedia-creator": LoraxBackend(60)})
    msg = h.build(backend="livemedia-creator")
    assert isinstance(msg, BuildFailedV1)
    assert msg.payload.stage == "build"
    assert "needs lorax" in msg.payload.error and "Fedora/EL" in msg.payload.error


def test_git_source_with_include_records_the_commit(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    commit = commit_files(
        repo,
        {
            "ks/parts/packages.ks": "%packages\npython3\n%end\n",
            "ks/node.ks": "lang en_US.UTF-8\npart / --size=64 --fstype=ext4\n"
            "%include ks/parts/packages.ks\n",
        },
    )
    h = Harness(tmp_path)
    msg = h.build(source=p.GitSource(url=f"file://{repo}", ref="main", kickstart_path="ks/node.ks"))
    assert isinstance(msg, ImageBuiltV1), msg.body
    assert msg.payload.source_commit == commit
    assert h.backend.plans[0].packages == ("python3",)
    missing = h.build(
        request_id="r2",
        source=p.GitSource(url=f"file://{repo}", ref="main", kickstart_path="ks/nope.ks"),
    )
    assert isinstance(missing, BuildFailedV1)
    assert missing.payload.stage == "fetch"
    assert "ks/nope.ks does not exist" in missing.payload.error


def test_a_ref_that_git_would_take_for_an_option_runs_nothing(tmp_path: Path) -> None:
    """The request that ran a command as root on the builder: ``ref = --upload-pack=...``."""
    repo = tmp_path / "repo"
    commit_files(repo, {"node.ks": "lang en_US.UTF-8\npart / --size=64\n"})
    marker = tmp_path / "pwned"
    hostile = f"--upload-pack=touch {marker};git-upload-pack"
    h = Harness(tmp_path)
    msg = h.build(source=p.GitSource(url=f"file://{repo}", ref=hostile, kickstart_path="node.ks"))
    assert isinstance(msg, BuildFailedV1)
    assert (msg.payload.stage, msg.payload.kickstart_line) == ("fetch", None)
    assert "starts with '-', which git reads as an option" in msg.payload.error
    # and git itself, were the check ever bypassed, reads it as a ref after "--"
    with pytest.raises(SourceError, match="cannot fetch"):
        sources.clone(f"file://{repo}", hostile, tmp_path / "checkout", io.StringIO(), ("file",))
    assert not marker.exists()


def test_a_transport_the_config_does_not_allow_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    commit_files(repo, {"node.ks": "lang en_US.UTF-8\npart / --size=64\n"})
    h = Harness(tmp_path)
    for url in (f"ext::sh -c touch% {tmp_path}/pwned", "https://127.0.0.1:1/x.git"):
        msg = h.build(
            request_id=url[:8], source=p.GitSource(url=url, ref="main", kickstart_path="node.ks")
        )
        assert isinstance(msg, BuildFailedV1) and msg.payload.stage == "fetch"
    assert not (tmp_path / "pwned").exists()
    # git is told the same: a local path is refused when only https is allowed
    with pytest.raises(SourceError):
        sources.clone(str(repo), "main", tmp_path / "checkout", io.StringIO(), ("https",))


def test_an_unpinned_branch_builds_the_commit_it_names_now(tmp_path: Path) -> None:
    """Two requests for the same branch, before and after a push that changed the kickstart:
    two builds, the second of the new commit. The same commit again is the first build."""
    repo = tmp_path / "repo"
    first_commit = commit_files(repo, {"node.ks": KS})
    source = p.GitSource(url=f"file://{repo}", ref="main", kickstart_path="node.ks")
    h = Harness(tmp_path)
    first = h.build(request_id="push-1", source=source)
    assert isinstance(first, ImageBuiltV1), first.body
    second_commit = commit_files(repo, {"node.ks": KS.replace("%end", "curl\n%end")})
    second = h.build(request_id="push-2", source=source)
    assert isinstance(second, ImageBuiltV1), second.body
    assert first.payload.source_commit == first_commit
    assert second.payload.source_commit == second_commit
    assert second.payload.build_id != first.payload.build_id
    assert second.payload.version == "20261123.2"
    assert "curl" in h.backend.plans[-1].packages
    # a third request for the branch, still at the second commit: no new build
    third = h.build(request_id="push-3", source=source)
    assert h.backend.calls == 2
    assert (third.payload.build_id, third.payload.request_id) == (
        second.payload.build_id,
        "push-3",
    )
    # the build_id is the request's with the commit pinned
    pinned = source.model_copy(update={"commit": second_commit})
    assert (
        second.payload.build_id
        == p.BuildRequested(request_id="x", name="node", source=pinned).build_id
    )


def test_a_branch_that_does_not_exist_is_build_failed(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    commit_files(repo, {"node.ks": KS})
    h = Harness(tmp_path)
    msg = h.build(
        source=p.GitSource(url=f"file://{repo}", ref="no-such-branch", kickstart_path="node.ks")
    )
    assert isinstance(msg, BuildFailedV1)
    assert msg.payload.stage == "fetch"
    assert "has no branch or tag 'no-such-branch'" in msg.payload.error


def test_without_part_root_the_image_is_its_content_plus_the_headroom(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    msg = h.build(
        source=p.InlineSource(kickstart=KS.replace("part / --size=64 --fstype=ext4\n", ""))
    )
    assert isinstance(msg, ImageBuiltV1), msg.body
    rootfs = liveimg.extract_rootfs(h.store.path_for(msg.payload.artifact.sha256), tmp_path / "x")
    liveimg.fsck(rootfs)
    size_mib = rootfs.stat().st_size // liveimg.MIB
    assert 256 < size_mib < 256 + 64  # the headroom and a tree of a few files
    log_text = h.store.read_record("logs", f"{msg.payload.build_id}.log") or b""
    assert b"no part /" in log_text
