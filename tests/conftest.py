"""Shared fixtures. Sample logs come from ../shared/samples (CI has them at the same place)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "samples"


def services_required() -> bool:
    """Under CI (BREACHWATCH_REQUIRE_SERVICES=1) a missing service or tool fails the test."""
    return os.environ.get("BREACHWATCH_REQUIRE_SERVICES") == "1"


def skip_or_fail(reason: str) -> None:
    if services_required():
        pytest.fail(f"required for this test but missing: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    if not SAMPLES.is_dir():
        skip_or_fail(f"sample logs not found at {SAMPLES}")
    return SAMPLES
