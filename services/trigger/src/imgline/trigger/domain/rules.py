"""Which pushes become which builds: the operator's rules file, matched against a ``Push``.

A rule names a repository (as the forge calls it, globs allowed), the branches and changed
paths that count, and the build: image name, stream, kickstart path, backend. The repository
is cloned from the rule's own ``url``, never from a URL in the event, and the pushed commit is
always pinned, so the build is of exactly what was pushed. The same push delivered twice gives
the same build_id (the builder builds it once; ``Seen`` spares the second request).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from functools import cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from imgline.core.config import parse_toml
from imgline.schemas import payloads as p
from imgline.trigger.domain.forges import Origin, Push
from imgline.trigger.errors import RulesError


class Rule(BaseModel):
    """One ``[[rule]]`` of the rules file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repository: str = Field(min_length=1, description="owner/name as the forge says; * ? ** globs")
    url: str = Field(min_length=1, description="where the builder clones the repository from")
    forge: Origin | None = Field(default=None, description="only pushes from this forge")
    branches: tuple[str, ...] = Field(default=("main",), min_length=1)
    paths: tuple[str, ...] = Field(default=(), description="changed paths that count; none: any")
    name: p.ImageName
    stream: p.StreamName = "main"
    kickstart_path: str = Field(min_length=1)
    backend: Literal["mmdebstrap", "livemedia-creator"] = "mmdebstrap"


class Rules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: tuple[Rule, ...] = ()


def load_rules(text: str, path: str = "rules.toml") -> Rules:
    """The rules in ``text`` (TOML); ``RulesError`` naming the file, rule and field."""
    return parse_toml(text, Rules, path, RulesError)


@cache
def _glob(pattern: str) -> re.Pattern[str]:
    """``*`` and ``?`` stay within one path segment, ``**`` crosses segments."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def matches(pattern: str, value: str) -> bool:
    return _glob(pattern).match(value) is not None


def applies(rule: Rule, push: Push) -> bool:
    """Whether ``push`` is one ``rule`` builds for. A push whose changed paths the forge did
    not list in full counts as touching every path: a needed build is never skipped."""
    if rule.forge is not None and rule.forge != push.forge:
        return False
    if not matches(rule.repository, push.repository):
        return False
    if not any(matches(b, push.branch) for b in rule.branches):
        return False
    if not rule.paths or not push.paths_complete:
        return True
    return any(matches(g, path) for g in rule.paths for path in push.changed_paths)


def requests(rules: Rules, push: Push) -> list[p.BuildRequested]:
    """The build requests ``push`` gives: one per rule that applies, with the commit pinned."""
    out = []
    for index, rule in enumerate(rules.rule):
        if not applies(rule, push):
            continue
        source = p.GitSource(
            url=rule.url, ref=push.branch, commit=push.commit, kickstart_path=rule.kickstart_path
        )
        out.append(
            p.BuildRequested(
                request_id=f"{push.forge}-{(push.delivery or push.commit)[:64]}-rule{index}",
                source=source,
                name=rule.name,
                stream=rule.stream,
                backend=rule.backend,
                requested_by=f"{push.forge} push to {push.repository} {push.branch}"[:200],
            )
        )
    return out


class Seen:
    """The build_ids requested lately (at most ``size``, for ``seconds``): a push the forge
    delivers again within that time is not requested again. Shared by the webhook's worker
    threads and the bus consumer's thread, so one lock makes each check-and-remember one step:
    the same push arriving both ways at once is still requested once."""

    def __init__(self, size: int, seconds: float, clock: Callable[[], float]) -> None:
        self.size = size
        self.seconds = seconds
        self.clock = clock
        self._when: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first(self, build_id: str) -> bool:
        """True the first time ``build_id`` is seen within the window (and remember it)."""
        with self._lock:
            now = self.clock()
            while self._when and (
                len(self._when) >= self.size or now - next(iter(self._when.values())) > self.seconds
            ):
                self._when.popitem(last=False)
            if build_id in self._when:
                return False
            self._when[build_id] = now
            return True

    def forget(self, build_id: str) -> None:
        """Let ``build_id`` through again (its request was never sent)."""
        with self._lock:
            self._when.pop(build_id, None)
