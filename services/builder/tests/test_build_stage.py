"""The builder's handler with fake backends: what it emits for requests that cannot build, for
a backend that fails for good or for now, and for a redelivery. The successful build, with
real assembly, is the image tier's (tests/image/test_build_handler.py)."""

from __future__ import annotations

from pathlib import Path
from typing import IO

import pytest
from fedora_messaging import message as fm_message
from prometheus_client import CollectorRegistry

from imgline.builder.domain.plan import BuildPlan
from imgline.builder.errors import BackendError, BackendTransientError
from imgline.builder.handlers import BUILDS, BuildMetrics, build_handler
from imgline.builder.ports import BuildOutput
from imgline.builder.settings import BuilderConfig
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.bus import policy
from imgline.core.errors import TransientError
from imgline.schemas import payloads as p
from imgline.schemas.messages import BuildFailedV1, BuildRequestedV1, ImageBuiltV1

pytestmark = pytest.mark.unit

KS = """lang en_US.UTF-8
keyboard us
timezone UTC
rootpw --lock
bootloader --location=none
part / --size=64
%packages
systemd
%end
"""


class FakeBackend:
    name = "mmdebstrap"

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def check_available(self) -> None:
        pass

    def build(self, plan: BuildPlan, kickstart: Path, workdir: Path, log: IO[str]) -> BuildOutput:
        self.calls += 1
        log.write("backend started\n")
        raise self.error


class Lab:
    def __init__(self, tmp: Path, error: Exception | None = None) -> None:
        self.backend = FakeBackend(error or BackendError("apt: no package foo"))
        self.store = LocalArtifactStore(tmp / "store")
        self.sent: list[fm_message.Message] = []
        self.handler = build_handler(
            BuilderConfig(store_dir=self.store.root, work_dir=tmp / "work", cache_dir=tmp / "c"),
            self.store,
            {"mmdebstrap": self.backend},
            publish=self.sent.append,
            topic_prefix="imgline",
            metrics=BuildMetrics(CollectorRegistry()),
        )

    def request(self, kickstart: str = KS) -> p.BuildRequested:
        return p.BuildRequested(
            request_id="r1", name="node", source=p.InlineSource(kickstart=kickstart)
        )

    def send(self, req: p.BuildRequested) -> fm_message.Message:
        self.handler(BuildRequestedV1.from_payload(req))
        return self.sent[-1]


def test_a_bad_kickstart_is_build_failed_with_the_line(tmp_path: Path) -> None:
    lab = Lab(tmp_path)
    msg = lab.send(lab.request(KS.replace("rootpw --lock", "rootpw --lokc")))
    assert isinstance(msg, BuildFailedV1) and msg.topic == "imgline.build.failed"
    failed = msg.payload
    assert (failed.stage, failed.kickstart_line) == ("parse", 4)
    assert failed.log_url is not None
    assert lab.backend.calls == 0


def test_a_backend_that_fails_for_good_is_build_failed_in_build(tmp_path: Path) -> None:
    lab = Lab(tmp_path)
    req = lab.request()
    failed = lab.send(req).payload
    assert (failed.stage, failed.error) == ("build", "apt: no package foo")
    log = lab.store.read_record("logs", f"{req.build_id}.log")
    assert log is not None and b"backend started" in log and b"# FAILED in build" in log
    assert not (tmp_path / "work" / req.build_id).exists()


def test_a_backend_that_fails_for_now_is_retried_with_its_log_kept(tmp_path: Path) -> None:
    lab = Lab(tmp_path, BackendTransientError("mirror did not answer"))
    req = lab.request()
    with pytest.raises(TransientError, match="mirror"):
        lab.send(req)
    assert lab.sent == []
    assert lab.store.read_record("logs", f"{req.build_id}.log") is not None


def test_the_last_try_of_a_backend_that_fails_for_now_is_build_failed(tmp_path: Path) -> None:
    lab = Lab(tmp_path, BackendTransientError("mirror did not answer"))
    req = lab.request()
    token = policy.CURRENT_ATTEMPT.set(policy.Attempt(5, 5))
    try:
        failed = lab.send(req).payload
    finally:
        policy.CURRENT_ATTEMPT.reset(token)
    assert isinstance(failed, p.BuildFailed)
    assert failed.stage == "build"
    assert failed.error == "gave up after 5 attempts: mirror did not answer"
    assert failed.log_url is not None


def test_a_crash_is_not_a_build_failure(tmp_path: Path) -> None:
    lab = Lab(tmp_path, RuntimeError("bug in the backend"))
    with pytest.raises(RuntimeError):
        lab.send(lab.request())
    assert lab.sent == []


def test_a_redelivery_announces_the_stored_build(tmp_path: Path) -> None:
    lab = Lab(tmp_path)
    req = lab.request()
    built = p.ImageBuilt(
        build_id=req.build_id,
        request_id="r1",
        name="node",
        version="20261202.1",
        stream="main",
        artifact=p.Artifact(uri="file:///store/x", sha256="a" * 64, size=1),
        source_commit=None,
        kickstart_sha256="b" * 64,
        backend="mmdebstrap",
        duration_seconds=1.0,
    )
    lab.store.write_record(BUILDS, req.build_id, built.model_dump_json().encode())
    msg = lab.send(req)
    assert isinstance(msg, ImageBuiltV1) and msg.payload == built
    assert lab.backend.calls == 0
