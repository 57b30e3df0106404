"""What the tester's handler needs from the outside, as Protocols: the unit tests give it
fakes, the service gives it the real checks (image tools and a qemu boot)."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Protocol

from imgline.schemas import payloads as p
from imgline.tester.domain.plan import Expectations
from imgline.tester.domain.results import CheckResult


class Checks(Protocol):
    """Every check of one image, cheapest first, each ending in a result (a check that cannot
    run is a result with status ``error``, not an exception)."""

    def run(
        self,
        image: Path,
        built: p.ImageBuilt,
        expectations: Expectations,
        workdir: Path,
        log: IO[str],
    ) -> list[CheckResult]: ...
