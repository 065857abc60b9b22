"""The health report: what happened to every input, read from the store.

`build_report` returns a `Report`, a frozen dataclass; ``Report.as_dict()`` is the JSON
edge, and ``report --json`` prints exactly that object::

    {"counts": {"planned", "leased", "succeeded", "failed", "skipped"}, "total",
     "failures": [{"key", "identity", "attempts", "error"}],
     "rejected": [{"line", "reason"}],
     "manifest": {"entries", "distinct", "missing": [identity, ...], "not_terminal"} | null,
     "stats_drift"}

``counts``, ``total`` and ``failures`` describe the whole store (``failures`` is the
dead-letter set, so its length is ``counts["failed"]``). ``rejected`` and ``manifest``
describe one manifest: a recorded run's (its entries were recorded in the same
transactions as their jobs) or a file's, compared now. ``manifest.missing`` lists the
identities of entries that have no job at all: the number that must always be zero.
``not_terminal`` counts distinct entries whose job is still planned or leased.
``stats_drift`` is the total drift the stats-keepers have found between their counts and
the database (must be zero as well).

Design notes. A run records its entries as (line, job key), not identities, so a missing
entry of a run is named by re-reading the run's source at that line (the run's options
say how); when the source cannot be read again (stdin, a moved file) the entry is given
as ``{"line": n}``. A file is compared as a stream: keys are checked a chunk at a time and
distinct keys are counted in a temporary on-disk set (`DiskKeySet`), so neither side is
held in memory whatever the manifest's size. Everything is read through `StoreReader`.
The report's parts are frozen dataclasses with their own ``as_dict``, so a caller reads
``report.counts[JobState.FAILED]`` rather than strings; ``total`` is derived from
``counts``, never stored beside it, so the two cannot disagree.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any, TypeAlias

import anyio.to_thread

from syncward.adapters.manifest import Entry, Manifest, Rejection, open_manifest
from syncward.errors import ConfigError
from syncward.jobs import ACTIVE, JobState, job_key
from syncward.store.keyset import DiskKeySet

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from syncward.store.base import RunInfo, StoreReader

__all__ = ["REPORT_KEYS", "Failure", "ManifestCheck", "RejectedLine", "Report",
           "build_report", "dumps"]

REPORT_KEYS = ("counts", "total", "failures", "rejected", "manifest", "stats_drift")
_ERROR_LINE_MAX = 500
_CHUNK = 1000

# An identity as the report gives it: a job's identity, or ``{"line": n}`` for an entry
# of a run whose source cannot be read again.
_Identity: TypeAlias = dict[str, str | int]


@dataclass(frozen=True, slots=True)
class Failure:
    """A job of the dead-letter set; ``error`` is the first line of its last error."""

    key: str
    identity: _Identity
    attempts: int
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "identity": self.identity, "attempts": self.attempts,
                "error": self.error}


@dataclass(frozen=True, slots=True)
class RejectedLine:
    """A manifest line that became no job, and why."""

    line: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class ManifestCheck:
    """One manifest compared with the store (see the module docstring)."""

    entries: int
    distinct: int
    missing: tuple[_Identity, ...]
    not_terminal: int

    def as_dict(self) -> dict[str, Any]:
        return {"entries": self.entries, "distinct": self.distinct,
                "missing": list(self.missing), "not_terminal": self.not_terminal}


@dataclass(frozen=True, slots=True)
class Report:
    """The health report (see the module docstring). ``counts`` holds every state."""

    counts: Mapping[JobState, int]
    failures: tuple[Failure, ...]
    rejected: tuple[RejectedLine, ...]
    manifest: ManifestCheck | None
    stats_drift: int

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of the module docstring, keys in that order."""
        return {
            "counts": {s.value: self.counts[s] for s in JobState},
            "total": self.total,
            "failures": [f.as_dict() for f in self.failures],
            "rejected": [r.as_dict() for r in self.rejected],
            "manifest": self.manifest.as_dict() if self.manifest is not None else None,
            "stats_drift": self.stats_drift,
        }


def _first_line(error: str | None) -> str | None:
    if error is None:
        return None
    line = error.strip().splitlines()[0] if error.strip() else error
    return line[:_ERROR_LINE_MAX]


async def build_report(store: StoreReader, *, run_id: int | None = None,
                       manifest: Manifest | None = None,
                       failures_limit: int | None = None) -> Report:
    """Build the report, comparing with run ``run_id``'s entries or with ``manifest``.

    ``manifest`` (an opened, unread manifest) is consumed; give at most one of the two.
    Raises:
        ValueError: both ``run_id`` and ``manifest`` were given.
        StoreUnavailable: a read failed.
    """
    if run_id is not None and manifest is not None:
        raise ValueError("compare with a run or with a manifest, not both")
    counts = await store.counts()
    failed = await store.jobs_in_state(JobState.FAILED, limit=failures_limit)
    section: ManifestCheck | None = None
    rejected: tuple[RejectedLine, ...] = ()
    if run_id is not None:
        section, rejected = await _compare_run(store, run_id)
    elif manifest is not None:
        section, rejected = await _compare_file(store, manifest)
    drift_events = await store.events(kind="stats_drift", limit=1_000_000)
    return Report(
        counts={s: counts[s] for s in JobState},
        failures=tuple(Failure(key=j.key, identity=j.identity, attempts=j.attempts,
                               error=_first_line(j.last_error)) for j in failed),
        rejected=rejected,
        manifest=section,
        stats_drift=sum(int(e.detail.get("off", 0)) for e in drift_events),
    )


def dumps(data: Mapping[str, Any]) -> str:
    """One JSON object on one line, as the command line prints it (keys in their order)."""
    return json.dumps(data, ensure_ascii=False, sort_keys=False)


# --- a recorded run ----------------------------------------------------------------------


async def _compare_run(store: StoreReader, run_id: int
                       ) -> tuple[ManifestCheck, tuple[RejectedLine, ...]]:
    cmp = await store.compare_run(run_id)
    missing: list[_Identity] = list(cmp.missing)
    if missing:
        lines = {int(m["line"]) for m in cmp.missing}
        info = await store.run_info(run_id)
        found = await anyio.to_thread.run_sync(_identities_at, info, lines)
        missing = [found.get(n, {"line": n}) for n in sorted(lines)]
    section = ManifestCheck(entries=cmp.entries, distinct=cmp.distinct,
                            missing=tuple(missing), not_terminal=cmp.not_terminal)
    rejected = tuple(RejectedLine(line=r.line, reason=r.reason)
                     for r in await store.run_rejects(run_id))
    return section, rejected


def _identities_at(info: RunInfo | None, lines: set[int]) -> dict[int, _Identity]:
    """Identities at ``lines`` of a run's source, re-read with the run's options."""
    if info is None or info.source == "-":
        return {}
    opts = info.options or {}
    found: dict[int, _Identity] = {}
    with contextlib.suppress(ConfigError, OSError):
        with open_manifest(info.source, fmt=opts.get("format"), key=opts.get("key")) as m:
            for item in m:
                if isinstance(item, Entry) and item.line in lines:
                    found[item.line] = dict(item.spec.identity)
                    if len(found) == len(lines):
                        break
    return found


# --- a manifest file ---------------------------------------------------------------------


@dataclass
class _FileComparison:
    """Thread-side half of a file comparison: reads chunks, keeps distinct keys on disk."""

    items: Iterator[Any]
    entries: int = 0
    rejected: list[RejectedLine] = field(default_factory=list)
    _seen: DiskKeySet = field(default_factory=DiskKeySet)

    def next_chunk(self) -> list[tuple[str, _Identity]] | None:
        """The next chunk's first-seen ``(key, identity)`` pairs; None at the end."""
        chunk = list(islice(self.items, _CHUNK))
        if not chunk:
            return None
        fresh: list[tuple[str, _Identity]] = []
        for item in chunk:
            if isinstance(item, Rejection):
                self.rejected.append(RejectedLine(line=item.line, reason=item.reason))
                continue
            self.entries += 1
            key = job_key(item.spec.identity)
            if self._seen.add(key):
                fresh.append((key, dict(item.spec.identity)))
        return fresh

    def close(self) -> None:
        self._seen.close()


async def _compare_file(store: StoreReader, manifest: Manifest
                        ) -> tuple[ManifestCheck, tuple[RejectedLine, ...]]:
    cmp = _FileComparison(iter(manifest))
    distinct = not_terminal = 0
    missing: list[_Identity] = []
    try:
        while (fresh := await anyio.to_thread.run_sync(cmp.next_chunk)) is not None:
            distinct += len(fresh)
            states = await store.key_states([k for k, _ in fresh])
            for key, identity in fresh:
                state = states.get(key)
                if state is None:
                    missing.append(identity)
                elif state in ACTIVE:
                    not_terminal += 1
    finally:
        await anyio.to_thread.run_sync(cmp.close)
    section = ManifestCheck(entries=cmp.entries, distinct=distinct, missing=tuple(missing),
                            not_terminal=not_terminal)
    return section, tuple(cmp.rejected)
