"""The rollout controller: host reports in, signed rollout changes out.

It runs in the publisher, beside the online keys: ``host.upgraded`` and ``host.rolled_back``
are tallied per release and wave (``domain.rollout``), and a decision becomes a signed change
of the stream's rollout table (``Repository.update_rollout``), which every host verifies and
obeys at its next refresh. A timer reviews the open rollouts too, so a wave that soaked long
enough opens without waiting for another report.

Reports come from hosts, so they are input, not truth: each host counts once per release (its
latest report), a report of a release that is not listed changes nothing, and the worst a
forged report can do within the updater role's rights is pause a release, which is the safe
direction (docs/security.md).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from imgline.core.trust import layout
from imgline.core.trust.errors import TrustError
from imgline.core.trust.rollout import Rollout
from imgline.publisher.adapters.repo import Repository
from imgline.publisher.domain.rollout import (
    Outcome,
    RolloutConfig,
    Step,
    applied,
    next_step,
    tally,
)
from imgline.publisher.errors import ReleaseError
from imgline.schemas import payloads as p
from imgline.schemas.messages import HostRolledBackV1, HostUpgradedV1

log = logging.getLogger(__name__)

Key = tuple[str, str, str]  # stream, name, version


class ReportLog:
    """Each host's latest outcome per release, in ``<dir>/<stream>/<name>/<version>.jsonl``.

    Appended, not rewritten, so a report costs one short write however large the fleet; a
    line torn by a crash is skipped when read back. Lines are not fsynced: a crash can lose
    the last few reports, which delays a decision and never makes a wrong one.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._outcomes: dict[Key, dict[str, Outcome]] = {}

    def _path(self, key: Key) -> Path:
        return self.directory / f"{layout.release_dir(*key)}.jsonl"  # validates each name

    def outcomes(self, key: Key) -> dict[str, Outcome]:
        found = self._outcomes.get(key)
        if found is None:
            found = self._outcomes[key] = self._read(self._path(key))
        return found

    @staticmethod
    def _read(path: Path) -> dict[str, Outcome]:
        out: dict[str, Outcome] = {}
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return out
        for line in lines:
            try:
                entry = json.loads(line)
                host, outcome = entry["host_id"], entry["outcome"]
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line
            if isinstance(host, str) and outcome in ("upgraded", "rolled_back"):
                out[host] = outcome
        return out

    def record(self, key: Key, host_id: str, outcome: Outcome) -> bool:
        """Remember ``outcome``; False when it is what this host had already reported."""
        outcomes = self.outcomes(key)
        if outcomes.get(host_id) == outcome:
            return False
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            fh.write(json.dumps({"host_id": host_id, "outcome": outcome}) + "\n")
        outcomes[host_id] = outcome
        return True


class RolloutController:
    """Tallies reports and signs pauses and new waves. Thread-safe: the consumer's handlers
    and the timer share it."""

    def __init__(
        self,
        repository: Repository,
        config: RolloutConfig,
        reports: ReportLog,
        *,
        clock: Callable[[], datetime] = layout.now,
    ) -> None:
        self.repository = repository
        self.config = config
        self.reports = reports
        self.clock = clock
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._tables: dict[str, dict[tuple[str, str], Rollout]] = {}

    # --- the bus ----------------------------------------------------------------------------

    def on_upgraded(self, msg: HostUpgradedV1) -> None:
        self.report(msg.payload, "upgraded")

    def on_rolled_back(self, msg: HostRolledBackV1) -> None:
        self.report(msg.payload, "rolled_back")

    def report(self, event: p.HostEvent, outcome: Outcome) -> Step | None:
        """Count one host's outcome of ``event.to_version`` and act on the tally."""
        key = (event.stream, event.name, event.to_version)
        with self._lock:
            try:
                fresh = self.reports.record(key, event.host_id, outcome)
            except TrustError as exc:  # a name the repository cannot hold
                log.warning("ignoring a report of %s: %s", key, exc)
                return None
            return self._review(key) if fresh else None

    # --- reviews ----------------------------------------------------------------------------

    def review_all(self) -> list[Step]:
        """Look at every rollout that is neither paused nor complete (the timer's job)."""
        steps: list[Step] = []
        with self._lock:
            self._tables.clear()
            state = self.repository.load()
            for stream in state.streams():
                for r in self.repository.rollouts(stream, state).rollouts:
                    if not r.paused and r.share < 1.0:
                        step = self._review((stream, r.name, r.version))
                        if step is not None:
                            steps.append(step)
        return steps

    def _current(self, key: Key) -> Rollout | None:
        stream, name, version = key
        table = self._tables.get(stream)
        if table is None:
            rollouts = self.repository.rollouts(stream).rollouts
            table = self._tables[stream] = {(r.name, r.version): r for r in rollouts}
        return table.get((name, version))

    def _review(self, key: Key) -> Step | None:
        """Decide on the cached view; only when that asks for a change, decide again on the
        signed state under the repository lock and sign the result."""
        stream, name, version = key
        now = self.clock()
        tallies = tally(self.reports.outcomes(key), name, version, self.config.waves)
        if next_step(self.config, self._current(key), tallies, now) is None:
            return None
        taken: list[Step] = []

        def change(current: Rollout | None) -> Rollout | None:
            step = next_step(self.config, current, tallies, now)
            if step is None:
                return current
            taken.append(step)
            return applied(step, current, name, version, now)

        try:
            self.repository.update_rollout(stream, name, version, change)
        except ReleaseError as exc:
            log.warning("rollout of %s-%s in %s not changed: %s", name, version, stream, exc)
            return None
        finally:
            self._tables.pop(stream, None)  # read again from what is signed now
        for step in taken:
            log.warning("rollout of %s-%s in %s: %s", name, version, stream, step.reason)
        return taken[0] if taken else None

    # --- the timer --------------------------------------------------------------------------

    def start(self) -> RolloutController:
        threading.Thread(target=self._run, name="rollout-controller", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(self.config.tick_seconds):
            try:
                self.review_all()
            except Exception:
                log.exception(
                    "reviewing the rollouts failed; retrying in %ss", self.config.tick_seconds
                )
