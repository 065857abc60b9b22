"""Late review of `syncward run --limit` (and the performance commits before it): one
failing test per bug found."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from click.testing import CliRunner

from syncward.cli import cli

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def test_a_limit_field_given_twice_is_named(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """"A bad one is one line naming it": two --limit options for one field said only
    "--limit: a field given twice", naming neither the field nor the option."""
    (tmp_path / "m.txt").write_text("a\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    result = CliRunner().invoke(
        cli, ["run", "m.txt", "--handler", "tests.cli_handlers:ok", "--db",
              f"sqlite:///{tmp_path / 'jobs.db'}", "--limit", "host:concurrency=1",
              "--limit", "host:rate=2"], catch_exceptions=False)
    assert result.exit_code == 2
    assert "--limit: the field 'host' is given twice" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
