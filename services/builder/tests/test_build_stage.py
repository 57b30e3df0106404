"""The builder's handler with fake backends: what it emits for requests that cannot build, for
a backend that fails for good or for now, and for a redelivery. The successful build, with
real assembly, is the image tier's (tests/image/test_build_handler.py)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pytest
from fedora_messaging import message as fm_message
from prometheus_client import CollectorRegistry

from imgline.builder.domain.plan import BuildPlan
from imgline.builder.errors import BackendError, BackendTransientError
from imgline.builder.handlers import BUILDS, BuildMetrics, BuildStage, build_handler
from imgline.builder.ports import BuildOutput
from imgline.builder.settings import BuilderConfig
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.bus import policy
from imgline.core.errors import TransientError
from imgline.core.liveimg import LiveImgError
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
    """Raises ``error``, or makes an empty root tree after ``delay`` seconds."""

    name = "mmdebstrap"

    def __init__(self, error: Exception | None = None, delay: float = 0.0) -> None:
        self.error = error
        self.delay = delay
        self.calls = 0

    def check_available(self) -> None:
        pass

    def build(self, plan: BuildPlan, kickstart: Path, workdir: Path, log: IO[str]) -> BuildOutput:
        self.calls += 1
        log.write("backend started\n")
        if self.error is not None:
            raise self.error
        time.sleep(self.delay)
        (workdir / "root").mkdir()
        return BuildOutput(tree=workdir / "root")


class Lab:
    def __init__(self, tmp: Path, error: Exception | None = None) -> None:
        self.backend = FakeBackend(error or BackendError("apt: no package foo"))
        self.store = LocalArtifactStore(tmp / "store")
        self.sent: list[fm_message.Message] = []
        self.registry = CollectorRegistry()
        self.handler = build_handler(
            BuilderConfig(store_dir=self.store.root, work_dir=tmp / "work", cache_dir=tmp / "c"),
            self.store,
            {"mmdebstrap": self.backend},
            publish=self.sent.append,
            topic_prefix="imgline",
            metrics=BuildMetrics(self.registry),
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
    # each stage it went through is timed, the failed one too, and nothing after it
    counts = {
        stage: lab.registry.get_sample_value(
            "imgline_build_stage_seconds_count", {"backend": "mmdebstrap", "stage": stage}
        )
        for stage in ("fetch", "parse", "build", "assemble")
    }
    assert counts == {"fetch": 1.0, "parse": 1.0, "build": 1.0, "assemble": None}
    failures = {"backend": "mmdebstrap", "result": "failed"}
    assert lab.registry.get_sample_value("imgline_builds_total", failures) == 1.0


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


class Assembly:
    """Stands in for liveimg assembly: writes the image.json it was given; can fail once; notes
    whether two builds were ever assembling at the same time."""

    def __init__(self, fail: list[Exception] | None = None) -> None:
        self.fail = fail or []
        self.inside = 0
        self.overlapped = False
        self.guard = threading.Lock()

    def __call__(
        self,
        output: BuildOutput,
        out: Path,
        plan: BuildPlan,
        *,
        meta: dict[str, Any],
        workdir: Path,
        build_log: IO[str],
    ) -> None:
        with self.guard:
            self.inside += 1
            self.overlapped |= self.inside > 1
        try:
            time.sleep(0.4)
            if self.fail:
                raise self.fail.pop()
            out.write_text(json.dumps(meta))
        finally:
            with self.guard:
                self.inside -= 1


def builder(
    tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    assembly: Assembly,
    delay: float = 0.0,
    **config: Any,
) -> tuple[Any, list[fm_message.Message], LocalArtifactStore]:
    monkeypatch.setattr(BuildStage, "_assemble", assembly)
    store = LocalArtifactStore(tmp / "store")
    sent: list[fm_message.Message] = []
    handler = build_handler(
        BuilderConfig(
            store_dir=store.root, work_dir=tmp / f"work-{len(list(tmp.iterdir()))}", **config
        ),
        store,
        {"mmdebstrap": FakeBackend(delay=delay)},
        publish=sent.append,
        topic_prefix="imgline",
        metrics=BuildMetrics(CollectorRegistry()),
        clock=lambda: datetime(2026, 12, 2, 12, 0, tzinfo=UTC),
    )
    return handler, sent, store


def request(n: int, **kw: Any) -> BuildRequestedV1:
    ks = KS.replace("systemd", f"systemd\npkg{n}")
    return BuildRequestedV1.from_payload(
        p.BuildRequested(request_id=f"r{n}", name="node", source=p.InlineSource(kickstart=ks), **kw)
    )


def test_a_build_that_fails_after_its_backend_leaves_no_gap_in_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler, sent, store = builder(tmp_path, monkeypatch, Assembly([LiveImgError("no room")]))
    handler(request(1))
    assert isinstance(sent[-1], BuildFailedV1) and sent[-1].payload.stage == "assemble"
    assert store.list_records("versions.node") == []
    handler(request(2))
    assert sent[-1].payload.version == "20261202.1"
    handler(request(3))
    assert sent[-1].payload.version == "20261202.2"


def test_a_build_stopped_after_its_claim_keeps_its_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler, sent, store = builder(tmp_path, monkeypatch, Assembly())
    handler(request(1))
    again = request(2)
    # the builder stored and claimed, then died before it said so: the retry is that version
    store.claim_record("versions.node", "20261202.2", again.body["build_id"].encode())
    handler(again)
    assert sent[-1].payload.version == "20261202.2"
    handler(request(3))
    assert sent[-1].payload.version == "20261202.3"


def test_builders_sharing_a_store_never_take_one_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assembly = Assembly()
    lanes = [builder(tmp_path, monkeypatch, assembly) for _ in range(4)]
    threads = [
        threading.Thread(target=handler, args=(request(i),))
        for i, (handler, _, _) in enumerate(lanes)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    versions = sorted(sent[-1].payload.version for _, sent, _ in lanes)
    assert versions == [f"20261202.{n}" for n in (1, 2, 3, 4)]
    assert not assembly.overlapped
    for version in versions:  # each image says the version it was announced with
        built = next(s[-1].payload for _, s, _ in lanes if s[-1].payload.version == version)
        path = lanes[0][2].path_for(built.artifact.sha256)
        assert json.loads(path.read_text())["version"] == version


def test_a_pinned_version_another_build_has_fails_before_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler, sent, _ = builder(tmp_path, monkeypatch, Assembly())
    handler(request(1, version="2.0"))
    assert sent[-1].payload.version == "2.0"
    handler(request(2, version="2.0"))
    failed = sent[-1].payload
    assert isinstance(failed, p.BuildFailed) and failed.stage == "build"
    assert "version 2.0 of node was already built by build" in failed.error


@pytest.mark.parametrize(
    ("section", "line", "kind"),
    [
        ("%pre\ntouch /tmp/on-the-builder\n%end\n", 10, "%pre"),
        (
            "%post\necho in the image\n%end\n%post --nochroot\ncp x $INSTALL_ROOT/\n%end\n",
            13,
            "%post --nochroot",
        ),
    ],
)
def test_scripts_that_run_on_the_build_host_are_refused_with_their_line(
    tmp_path: Path, section: str, line: int, kind: str
) -> None:
    lab = Lab(tmp_path)
    failed = lab.send(lab.request(KS + section)).payload
    assert isinstance(failed, p.BuildFailed)
    assert (failed.stage, failed.kickstart_line) == ("parse", line)
    assert failed.error.startswith(f"inline.ks:{line}: {kind} runs on the build host")
    assert "allow_host_scripts" in failed.error
    assert lab.backend.calls == 0


def test_an_operator_may_allow_host_scripts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler, sent, _ = builder(tmp_path, monkeypatch, Assembly(), allow_host_scripts=True)
    ks = KS + "%post --nochroot\ncp x $INSTALL_ROOT/\n%end\n"
    handler(
        BuildRequestedV1.from_payload(
            p.BuildRequested(request_id="r", name="node", source=p.InlineSource(kickstart=ks))
        )
    )
    assert isinstance(sent[-1], ImageBuiltV1)
