"""Staged rollouts as the repository signs them: which share of hosts may take a release, and
whether it is paused (pure; shared by the publisher that writes it and the hosts that obey it).

The state is one table per stream, kept in the ``custom`` field of the stream's
``releases.json`` entry in the stream role's metadata. So it is signed by the same role (and
the same keys) as the release list itself, every host already fetches and verifies it on each
refresh, and changing it is one ordinary commit (a new stream role version, snapshot and
timestamp): nothing a bus message or an unsigned file could forge, freeze or replay. A release
the table does not name is open to every host, as before rollouts existed.

Each host has a place in ``[0, 1)`` per release, a hash of its id and the release: every
machine computes the same place without coordination, the publisher's controller included
(which is how it knows which wave a report comes from), and the place is redrawn per release
so the same hosts are not always first. A host takes a release when its place is below the
release's open ``share``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imgline.core.trust.errors import TrustError

#: The key in the ``custom`` field of ``<stream>/releases.json`` that holds the table.
CUSTOM_KEY = "imgline-rollout"
FORMAT: Literal["imgline-rollout/1"] = "imgline-rollout/1"
#: Shares are signed in parts per million (canonical JSON has integers, not floats).
PPM = 1_000_000
_FRACTION_BITS = 40  # with the 0..99 bucket this stays exact in a float's 53 bits


def _digest(host_id: str, name: str, version: str) -> bytes:
    return hashlib.sha256(f"{host_id}\0{name}\0{version}".encode()).digest()


def bucket(host_id: str, name: str, version: str) -> int:
    """The host's percentile (0..99) in the rollout of one release: ``floor(position * 100)``."""
    return int.from_bytes(_digest(host_id, name, version)[:8], "big") % 100


@functools.lru_cache(maxsize=1 << 16)  # the controller places every reporting host per report
def position(host_id: str, name: str, version: str) -> float:
    """The host's place in ``[0, 1)`` in the rollout of one release.

    Its percentile is ``bucket`` (so a host-side ``rollout_percent`` and the signed share
    agree on who is early); the rest of the hash orders hosts within a percentile, so a
    share of 0.005 opens half of the first percentile.
    """
    digest = _digest(host_id, name, version)
    whole = int.from_bytes(digest[:8], "big") % 100
    fraction = int.from_bytes(digest[8:13], "big") / (1 << _FRACTION_BITS)
    return (whole + fraction) / 100


def ppm(share: float) -> int:
    """A share in [0, 1] as the integer parts per million the table signs."""
    return round(share * PPM)


def wave_of(place: float, waves: Sequence[float]) -> int:
    """The index of the first wave whose share covers ``place``; ``len(waves)`` when none
    does (waves are increasing shares, e.g. ``[0.01, 0.1, 0.5, 1.0]``)."""
    return next((i for i, share in enumerate(waves) if place < share), len(waves))


class Rollout(BaseModel):
    """One release's rollout: the share of hosts it is open to, and whether it is paused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    version: str = Field(pattern=r"^[0-9A-Za-z][0-9A-Za-z._+~-]{0,63}$")
    share_ppm: int = Field(
        ge=0,
        le=PPM,
        description="hosts whose place is below share_ppm / 1e6 may take it (an integer: "
        "signed metadata is canonical JSON, which has no floats)",
    )
    paused: bool = Field(default=False, description="no host takes it, whatever its place")
    reason: str | None = Field(default=None, max_length=1000, description="why it was paused")
    changed: datetime = Field(description="when share or pause last changed (soak timing)")

    @property
    def share(self) -> float:
        """The open share of hosts, in [0, 1]."""
        return self.share_ppm / PPM

    def admits(self, place: float) -> bool:
        return not self.paused and place < self.share


class RolloutTable(BaseModel):
    """A stream's rollouts; releases it does not name are open to every host."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["imgline-rollout/1"] = FORMAT
    rollouts: list[Rollout] = Field(default_factory=list)

    def of(self, name: str, version: str) -> Rollout | None:
        return next((r for r in self.rollouts if (r.name, r.version) == (name, version)), None)

    def paused(self, name: str, version: str) -> bool:
        found = self.of(name, version)
        return found is not None and found.paused

    def put(self, rollout: Rollout) -> RolloutTable:
        """The table with ``rollout`` replacing the release's entry (or added)."""
        key = (rollout.name, rollout.version)
        others = [r for r in self.rollouts if (r.name, r.version) != key]
        return RolloutTable(rollouts=[*others, rollout])

    def only(self, releases: Iterable[tuple[str, str]]) -> RolloutTable:
        """The entries of the listed (name, version) releases only (retention dropped the rest)."""
        keep = set(releases)
        return RolloutTable(rollouts=[r for r in self.rollouts if (r.name, r.version) in keep])


def table_of(custom: Mapping[str, Any] | None, what: str = "releases.json") -> RolloutTable:
    """The table in a ``releases.json`` target's ``custom`` field; empty when there is none.
    A malformed table is refused: it is signed, so it is the publisher's bug, and guessing
    could open a paused release."""
    raw = (custom or {}).get(CUSTOM_KEY)
    if raw is None:
        return RolloutTable()
    try:
        return RolloutTable.model_validate(raw)
    except ValidationError as exc:
        raise TrustError(f"the rollout table signed for {what} is malformed: {exc}") from None


def custom_with(custom: Mapping[str, Any] | None, table: RolloutTable) -> dict[str, Any]:
    """``custom`` with ``table`` in it (left out when empty, so a stream without rollouts
    signs exactly what it signed before)."""
    out = {k: v for k, v in (custom or {}).items() if k != CUSTOM_KEY}
    if table.rollouts:
        out[CUSTOM_KEY] = table.model_dump(mode="json")
    return out
