"""From an ``image.tested`` event to the release's manifest and index entry (pure)."""

from __future__ import annotations

from datetime import datetime

from imgline.core.trust import layout
from imgline.schemas import payloads as p


def summary(tested: p.ImageTested) -> layout.TestSummary:
    return layout.TestSummary(
        passed=tested.passed,
        checks=len(tested.results),
        failed=[r.name for r in tested.results if r.status in ("failed", "error")],
        skipped=[r.name for r in tested.results if r.status == "skipped"],
        report_url=tested.report_url,
    )


def manifest(tested: p.ImageTested, published: datetime) -> layout.Manifest:
    image = tested.image
    return layout.Manifest(
        name=image.name,
        version=image.version,
        stream=image.stream,
        build_id=tested.build_id,
        image=layout.image_target(image.stream, image.name, image.version),
        image_sha256=image.artifact.sha256,
        image_size=image.artifact.size,
        install_ks=layout.install_ks_target(image.stream, image.name, image.version),
        source_commit=image.source_commit,
        tests=summary(tested),
        published=published,
    )


def entry(m: layout.Manifest) -> layout.Release:
    return layout.Release(
        name=m.name,
        version=m.version,
        build_id=m.build_id,
        manifest=layout.manifest_target(m.stream, m.name, m.version),
        image=m.image,
        install_ks=m.install_ks,
        published=m.published,
    )


def rejection_reason(tested: p.ImageTested) -> str:
    failed = [r for r in tested.results if r.status in ("failed", "error")]
    lines = [f"{r.name}: {r.detail or r.status}" for r in failed]
    return "failed tests: " + "; ".join(lines)[:4000] if lines else "not passed"
