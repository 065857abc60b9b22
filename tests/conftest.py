"""Shared fixtures: kept minimal on purpose; each test module builds what it needs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def tmp_db_url(tmp_path: Path) -> str:
    """``sqlite:///<tmp_path>/jobs.db``: a store URL in this test's own directory."""
    return f"sqlite:///{tmp_path}/jobs.db"
