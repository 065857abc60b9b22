"""The health report: what happened to every input, read from the store.

Shape (``report --json`` prints exactly this object)::

    {"counts": {"planned", "leased", "succeeded", "failed", "skipped"}, "total",
     "failures": [{"key", "identity", "attempts", "error"}],
     "rejected": [{"line", "reason"}],
     "manifest": {"entries", "distinct", "missing": [...], "not_terminal"} | null,
     "stats_drift"}

``manifest.missing`` lists manifest entries that have no job at all: the number that
must always be zero. ``stats_drift`` is the total drift the stats-keepers have found
between their counts and the database (must be zero as well).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from syncward.jobs import JobState

if TYPE_CHECKING:
    from syncward.adapters.sqlite import SQLiteStore

__all__ = ["build_report", "REPORT_KEYS"]

REPORT_KEYS = ("counts", "total", "failures", "rejected", "manifest", "stats_drift")
_ERROR_LINE_MAX = 500


def _first_line(error: str | None) -> str | None:
    if error is None:
        return None
    line = error.strip().splitlines()[0] if error.strip() else error
    return line[:_ERROR_LINE_MAX]


async def build_report(store: SQLiteStore, *, run_id: int | None = None,
                       failures_limit: int | None = None) -> dict[str, Any]:
    """Build the report for the store, comparing with run ``run_id``'s manifest if given."""
    counts = await store.counts()
    failed = await store.jobs_in_state(JobState.FAILED, limit=failures_limit)
    manifest: dict[str, Any] | None = None
    rejected: list[dict[str, Any]] = []
    if run_id is not None:
        cmp = await store.compare_run(run_id)
        manifest = {"entries": cmp.entries, "distinct": cmp.distinct,
                    "missing": cmp.missing, "not_terminal": cmp.not_terminal}
        rejected = [{"line": r["line"], "reason": r["reason"]}
                    for r in await store.run_rejects(run_id)]
    drift_events = await store.events(kind="stats_drift", limit=1_000_000)
    return {
        "counts": {s.value: counts[s] for s in JobState},
        "total": sum(counts.values()),
        "failures": [{"key": j.key, "identity": j.identity, "attempts": j.attempts,
                      "error": _first_line(j.last_error)} for j in failed],
        "rejected": rejected,
        "manifest": manifest,
        "stats_drift": sum(int(e.get("off", 0)) for e in drift_events),
    }


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(report, ensure_ascii=False, sort_keys=False)
