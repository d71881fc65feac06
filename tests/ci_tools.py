"""What the tests do when something they need is not installed here."""

from __future__ import annotations

import os

import pytest


def require(what: str, present: bool) -> None:
    """Skip a test (module) when a tool or package is missing here; fail in CI, which installs
    them all (``.ci/run``), so a skip there cannot hide a regression."""
    if present:
        return
    message = f"{what} is not installed here; CI installs it (.ci/run)"
    if os.environ.get("CI"):
        pytest.fail(f"CI: {message}")
    pytest.skip(message, allow_module_level=True)
