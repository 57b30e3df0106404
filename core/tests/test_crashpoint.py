"""The drills' crash hook kills only at the step its variable names, and never without it."""

from __future__ import annotations

import os
import signal

import pytest

from imgline.core.crashpoint import crash_hook

pytestmark = pytest.mark.unit

VAR = "IMGLINE_TESTSVC_CRASH_AT"


def test_the_hook_kills_at_the_named_step_only() -> None:
    kills: list[tuple[int, int]] = []
    crash = crash_hook(VAR, {VAR: "targets_placed"}, lambda pid, sig: kills.append((pid, sig)))
    crash("image_linked")
    assert kills == []
    crash("targets_placed")
    assert kills == [(os.getpid(), signal.SIGKILL)]


def test_without_the_variable_the_hook_does_nothing() -> None:
    kills: list[tuple[int, int]] = []
    crash = crash_hook(VAR, {}, lambda pid, sig: kills.append((pid, sig)))
    for step in ("image_linked", "targets_placed", "committed", ""):
        crash(step)
    assert kills == []
