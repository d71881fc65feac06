"""Shared test fixtures. Tests that need the real X-rays skip when ../shared is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_CXR = REPO_ROOT.parent / "shared" / "data" / "cxr"


@pytest.fixture(scope="session")
def shared_cxr() -> Path:
    """Root of the real chest X-ray developer set; skips the test when it is absent."""
    if not (SHARED_CXR / "MANIFEST.csv").is_file():
        pytest.skip("real X-ray set ../shared/data/cxr is not present in this clone")
    return SHARED_CXR
