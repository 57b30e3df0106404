"""The rollout controller's decisions (pure): when to pause a release, when to open its next wave.

Hosts report ``host.upgraded`` (the new release booted and passed its health check) and
``host.rolled_back`` (it did not, and the host went back). Each host's wave follows from its
place in the release's rollout (``imgline.core.trust.rollout.position``), so the reports need
not say it. A wave whose hosts roll back more than ``pause_share`` of the time, once at least
``min_reports`` of them have reported, pauses the release; the pause is final until an
operator resumes it. A wave that has soaked for ``soak_seconds`` while at least
``min_reports`` of its own hosts reported, and none of the open waves is over the threshold,
opens the next wave.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from imgline.core.trust.rollout import Rollout, position, ppm, wave_of

Outcome = Literal["upgraded", "rolled_back"]


class RolloutConfig(BaseModel):
    """``[consumer_config.rollout]``: the waves new releases go out in, and when to pause.

    The default is one wave of every host (no staging, as before rollouts existed) with the
    automatic pause on: a release that a fifth of its hosts roll back is stopped."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    waves: list[float] = Field(
        default_factory=lambda: [1.0],
        description="increasing shares of hosts, the last 1.0, e.g. [0.01, 0.1, 0.5, 1.0]",
    )
    pause_share: float = Field(
        default=0.2,
        gt=0.0,
        lt=1.0,
        description="pause when more than this share of a wave's reports are rollbacks",
    )
    min_reports: int = Field(
        default=5, ge=1, description="reports of its own hosts a wave needs to pause or advance"
    )
    soak_seconds: float = Field(
        default=3600.0, ge=0.0, description="how long a wave runs before the next may open"
    )
    tick_seconds: float = Field(
        default=60.0, gt=0.0, description="how often waves are reviewed without new reports"
    )

    @field_validator("waves")
    @classmethod
    def _increasing_to_all(cls, waves: list[float]) -> list[float]:
        if not waves or waves[-1] != 1.0:
            raise ValueError(f"waves {waves} must end with 1.0: the last wave is every host")
        if any(not 0.0 < w <= 1.0 for w in waves):
            raise ValueError(f"waves {waves}: each is a share of hosts in (0, 1]")
        if any(a >= b for a, b in itertools.pairwise(waves)):
            raise ValueError(f"waves {waves} must increase")
        return waves


@dataclass(frozen=True)
class Tally:
    """One wave's reports."""

    upgraded: int = 0
    rolled_back: int = 0

    @property
    def reports(self) -> int:
        return self.upgraded + self.rolled_back

    @property
    def rollback_share(self) -> float:
        return self.rolled_back / self.reports if self.reports else 0.0


@dataclass(frozen=True)
class Step:
    """What the controller does to a release's signed rollout."""

    action: Literal["pause", "open"]
    share: float
    reason: str


def tally(
    outcomes: Mapping[str, Outcome], name: str, version: str, waves: Sequence[float]
) -> list[Tally]:
    """Reports per wave (by each reporting host's place); index ``i`` is ``waves[i]``."""
    counts = [[0, 0] for _ in waves]
    for host_id, outcome in outcomes.items():
        wave = wave_of(position(host_id, name, version), waves)
        if wave < len(waves):
            counts[wave][outcome == "rolled_back"] += 1
    return [Tally(upgraded=u, rolled_back=r) for u, r in counts]


def wave_index(share: float, waves: Sequence[float]) -> int:
    """The wave a signed share corresponds to: the first wave at least that large (a share an
    operator set by hand between waves belongs to the wave above it)."""
    return next((i for i, w in enumerate(waves) if share <= w), len(waves) - 1)


def next_step(
    config: RolloutConfig,
    current: Rollout | None,
    tallies: Sequence[Tally],
    now: datetime,
) -> Step | None:
    """Pause, open the next wave, or nothing. ``current`` None is a release open to all."""
    if current is not None and current.paused:
        return None  # only an operator resumes a paused release
    share = 1.0 if current is None else current.share
    return _pause(config, share, tallies) or (
        None if current is None else _open(config, current, tallies, now)
    )


def _pause(config: RolloutConfig, share: float, tallies: Sequence[Tally]) -> Step | None:
    """Only the open waves count: a report from a host outside the open share (an admin's
    manual apply) is not what the wave was meant to test."""
    for i, t in enumerate(tallies[: wave_index(share, config.waves) + 1]):
        if t.reports >= config.min_reports and t.rollback_share > config.pause_share:
            return Step(
                "pause",
                share,
                f"{t.rolled_back} of {t.reports} reporting hosts of wave {i + 1} "
                f"(up to {config.waves[i]:.0%} of hosts) rolled back ({t.rollback_share:.0%}, "
                f"over the {config.pause_share:.0%} allowed)",
            )
    return None


def _open(
    config: RolloutConfig, current: Rollout, tallies: Sequence[Tally], now: datetime
) -> Step | None:
    wave = wave_index(current.share, config.waves)
    if wave + 1 >= len(config.waves):
        return None
    if (now - current.changed).total_seconds() < config.soak_seconds:
        return None
    own = tallies[wave].reports if wave < len(tallies) else 0
    if own < config.min_reports:
        return None  # a wave is judged by its own hosts, not by the waves before it
    following = config.waves[wave + 1]
    return Step(
        "open",
        following,
        f"wave {wave + 1} healthy ({own} reports); opening wave {wave + 2} ({following:.0%})",
    )


def applied(step: Step, current: Rollout | None, name: str, version: str, now: datetime) -> Rollout:
    """The rollout after ``step``."""
    if step.action == "pause":
        return Rollout(
            name=name,
            version=version,
            share_ppm=ppm(step.share),
            paused=True,
            reason=step.reason,
            changed=now,
        )
    return Rollout(name=name, version=version, share_ppm=ppm(step.share), changed=now)


def first_wave(config: RolloutConfig, name: str, version: str, now: datetime) -> Rollout | None:
    """The rollout a new release starts with; None when the first wave is every host."""
    if config.waves[0] >= 1.0:
        return None
    return Rollout(name=name, version=version, share_ppm=ppm(config.waves[0]), changed=now)
