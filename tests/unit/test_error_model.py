"""One error model across every package: each error imgline raises is transient or permanent,
never both and never neither (docs/architecture.md, "Errors and idempotency").

The bases that only group errors (``ImglineError``, a service's own type, ``BrokerError``) are
listed here, and the sources are searched so that none of them is ever raised as it is."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path
from typing import get_args

import pytest

import imgline
from imgline.core.errors import ImglineError, PermanentError, TransientError
from imgline.core.trust.errors import Reason, TrustError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

#: Grouping bases, neither transient nor permanent: never raised themselves.
GROUPS = {"ImglineError", "BrokerError", "BuilderError", "PublisherError"}
#: ``TrustError(...)`` makes a transient or permanent subclass from its reason (tested below).
BASES = GROUPS | {"TransientError", "PermanentError", "TrustError"}


def _all_errors() -> list[type[ImglineError]]:
    for info in pkgutil.walk_packages(imgline.__path__, "imgline."):
        if ".tests" not in info.name and not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    found: list[type[ImglineError]] = []
    todo: list[type[ImglineError]] = [ImglineError]
    while todo:
        cls = todo.pop()
        if cls not in found:
            found.append(cls)
            todo += cls.__subclasses__()
    return found


def test_every_error_class_is_transient_or_permanent() -> None:
    errors = _all_errors()
    assert len(errors) > 20  # every package was imported
    unclassified = [
        f"{c.__module__}.{c.__qualname__}"
        for c in errors
        if c.__name__ not in BASES
        and issubclass(c, TransientError) == issubclass(c, PermanentError)
    ]
    assert unclassified == []


def _sources() -> list[Path]:
    dirs = [ROOT / "core" / "src", ROOT / "schemas" / "src"]
    dirs += sorted((ROOT / "services").glob("*/src"))
    return [p for d in dirs for p in sorted(d.rglob("*.py"))]


def test_no_grouping_base_is_raised_as_it_is() -> None:
    raised = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Raise)
                and isinstance(node.exc, ast.Call)
                and isinstance(node.exc.func, ast.Name)
                and node.exc.func.id in GROUPS
            ):
                raised.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.exc.func.id}")
    assert raised == []


@pytest.mark.parametrize("reason", get_args(Reason))
def test_a_trust_error_is_classified_by_its_reason(reason: str) -> None:
    exc = TrustError("x", reason)  # type: ignore[arg-type]
    assert isinstance(exc, TrustError) and exc.reason == reason and str(exc) == "x"
    transient = reason in {"unavailable", "slow", "no_space"}
    assert isinstance(exc, TransientError) is transient
    assert isinstance(exc, PermanentError) is not transient
