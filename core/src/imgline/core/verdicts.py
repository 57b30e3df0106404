"""The tester's verdicts as the artefact store keeps them: the publisher reads the verdict
from here, never from the message that announces it (docs/security.md).

A verdict is keyed by the build and the exact bytes tested (``<build_id>.<sha256>``), so a
message naming a known build with other bytes finds no verdict, and cannot replace one.
"""

from __future__ import annotations

from imgline.core.artifacts import LocalArtifactStore
from imgline.schemas import payloads as p

NAMESPACE = "tests"


def key(build_id: str, sha256: str) -> str:
    return f"{build_id}.{sha256}"


def write(store: LocalArtifactStore, tested: p.ImageTested) -> None:
    art = tested.image.artifact
    store.write_record(
        NAMESPACE, key(tested.build_id, art.sha256), tested.model_dump_json().encode()
    )


def read(store: LocalArtifactStore, build_id: str, sha256: str) -> p.ImageTested | None:
    """The verdict the tester stored for exactly these bytes of this build, if any."""
    raw = store.read_record(NAMESPACE, key(build_id, sha256))
    return None if raw is None else p.ImageTested.model_validate_json(raw)
