"""A pipeline's events as real payloads, for the ledger's tests: one build from its request to
hosts' reports, with the times a real run would have."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from imgline.schemas import payloads as p

T0 = datetime(2026, 12, 6, 6, 0, tzinfo=UTC)
SHA = "ab" * 32


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def requested(name: str = "node", stream: str = "main", t: float = 0) -> p.BuildRequested:
    return p.BuildRequested(
        request_id=f"push-{name}-{t}",
        source=p.GitSource(
            url="https://git.example.com/os/node.git",
            ref="refs/heads/main",
            commit="4f1c2a9e0d7b6c5a4f3e2d1c0b9a8f7e6d5c4b3a",
            kickstart_path="node.ks",
        ),
        name=name,
        stream=stream,
        requested_by="trigger (github)",
        emitted_at=at(t),
    )


def built(req: p.BuildRequested, version: str, t: float) -> p.ImageBuilt:
    return p.ImageBuilt(
        build_id=req.build_id,
        request_id=req.request_id,
        name=req.name,
        version=version,
        stream=req.stream,
        artifact=p.Artifact(uri=f"file:///store/sha256/{SHA}", sha256=SHA, size=412 << 20),
        kickstart_sha256="cd" * 32,
        backend="mmdebstrap",
        duration_seconds=t,
        emitted_at=at(t),
    )


def verdict(b: p.ImageBuilt, t: float, *, passed: bool = True) -> p.ImageTested:
    return p.ImageTested(
        build_id=b.build_id,
        image=b.ref(),
        passed=passed,
        results=[
            p.TestResult(name="integrity", status="passed", duration_seconds=1.0),
            p.TestResult(
                name="boot", status="passed" if passed else "failed", duration_seconds=40.0
            ),
            p.TestResult(name="packages.rpm", status="skipped", duration_seconds=0.0),
        ],
        emitted_at=at(t),
    )


def published(b: p.ImageBuilt, t: float) -> p.ImagePublished:
    return p.ImagePublished(
        build_id=b.build_id,
        name=b.name,
        version=b.version,
        stream=b.stream,
        manifest_url="http://repo.example.com/m.json",
        manifest_sha256="ef" * 32,
        image_url="http://repo.example.com/i.img",
        image_sha256=SHA,
        image_size=412 << 20,
        key_id="3f9a1c0b9a8f7e6d",
        repository_url="http://repo.example.com",
        role="main",
        role_version=7,
        emitted_at=at(t),
    )


def upgraded(host: str, b: p.ImageBuilt, previous: str | None, t: float) -> p.HostUpgraded:
    return p.HostUpgraded(
        host_id=host,
        name=b.name,
        stream=b.stream,
        from_version=previous,
        to_version=b.version,
        duration_seconds=30,
        layer=f"{b.name}-{b.version}+1",
        emitted_at=at(t),
    )


def rolled_back(host: str, b: p.ImageBuilt, previous: str, t: float) -> p.HostRolledBack:
    return p.HostRolledBack(
        host_id=host,
        name=b.name,
        stream=b.stream,
        from_version=previous,
        to_version=b.version,
        duration_seconds=90,
        step="health",
        error="unit payload.service is failed",
        emitted_at=at(t),
    )
