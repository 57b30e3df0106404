"""From an ``image.tested`` event to the release's manifest and index entry (pure)."""

from __future__ import annotations

from datetime import datetime

from imgline.core import repository as repo
from imgline.schemas import payloads as p


def summary(tested: p.ImageTested) -> repo.TestSummary:
    return repo.TestSummary(
        passed=tested.passed,
        checks=len(tested.results),
        failed=[r.name for r in tested.results if r.status in ("failed", "error")],
        skipped=[r.name for r in tested.results if r.status == "skipped"],
        report_url=tested.report_url,
    )


def manifest(tested: p.ImageTested, key_id: str, created: datetime) -> repo.Manifest:
    image = tested.image
    return repo.Manifest(
        name=image.name,
        version=image.version,
        stream=image.stream,
        build_id=tested.build_id,
        image=repo.ImageFile(
            path=repo.image_path(image.name, image.version).as_posix(),
            sha256=image.artifact.sha256,
            size=image.artifact.size,
        ),
        source_commit=image.source_commit,
        tests=summary(tested),
        created=created,
        key_id=key_id,
    )


def entry(m: repo.Manifest, manifest_sha256: str, published: datetime) -> repo.IndexEntry:
    return repo.IndexEntry(
        name=m.name,
        version=m.version,
        build_id=m.build_id,
        manifest=repo.manifest_path(m.name, m.version).as_posix(),
        manifest_sha256=manifest_sha256,
        image_sha256=m.image.sha256,
        image_size=m.image.size,
        published=published,
    )


def rejection_reason(tested: p.ImageTested) -> str:
    failed = [r for r in tested.results if r.status in ("failed", "error")]
    lines = [f"{r.name}: {r.detail or r.status}" for r in failed]
    return "failed tests: " + "; ".join(lines)[:4000] if lines else "not passed"
