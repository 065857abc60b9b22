"""``/metrics``: Prometheus text format through ``prometheus-client``, a registry per app.

Two kinds of figure:

* read at scrape time from the view (`MetricsSnapshot`): ``syncward_jobs{state}`` and
  the other gauges, and the counters the runtime already keeps (commits, rejected
  writes, commit failures, actor restarts, reconciliation cycles and the issues they
  fixed, stats drift);
* observed as they happen, on a live runtime only (this object is its
  `RuntimeObserver`): outcomes by kind, lease reaps, and the histograms of batch size,
  commit time and submit-to-commit latency. These start at zero when the app is made.

No global state: every app has its own `CollectorRegistry`, so two apps (or two tests)
never share a figure. Nothing a person typed (tokens, URLs) is ever a label.
"""

from __future__ import annotations

from collections import Counter as Tally
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from syncward.actors.reconciler import FIXES
from syncward.jobs import JobState
from syncward.messages import Accepted, Outcome, OutcomeKind, ReapExpired

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from syncward.messages import ApplyResult, SyncerMsg
    from syncward.web.views import MetricsSnapshot, OpsView

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0)


class Metrics:
    """The metrics of one app over ``view``. See the module docstring."""

    def __init__(self, view: OpsView, *, observed: bool) -> None:
        """``observed``: this object will be the runtime's observer (a live view)."""
        self.view = view
        self.registry = CollectorRegistry(auto_describe=False)
        self._snapshot: MetricsSnapshot | None = None
        self.registry.register(_SnapshotCollector(self))
        if observed:
            self._observe(self.registry)

    def _observe(self, r: CollectorRegistry) -> None:
        self.outcomes = Counter("syncward_outcomes", "Committed job outcomes, by kind "
                                "(retry: planned again or failed when attempts ran out).",
                                ["kind"], registry=r)
        for kind in ("succeeded", "retry", "failed", "skipped"):
            self.outcomes.labels(kind)
        self.reaps = Counter("syncward_lease_reaps", "Expired leases sent back by the "
                             "lease-reaper.", registry=r)
        self.batch_size = Histogram("syncward_batch_size", "Messages per committed batch.",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.commit_seconds = Histogram("syncward_commit_seconds", "Time of one batch's "
                                        "transaction in the store.",
                                        buckets=_SECONDS_BUCKETS, registry=r)
        self.submit_seconds = Histogram("syncward_submit_to_commit_seconds", "From a submit "
                                        "to its commit.", buckets=_SECONDS_BUCKETS,
                                        registry=r)

    # --- the runtime's observer ------------------------------------------------------

    def committed(self, batch: Sequence[SyncerMsg], result: ApplyResult,
                  seconds: float) -> None:
        self.batch_size.observe(len(batch))
        self.commit_seconds.observe(seconds)
        kinds: Tally[OutcomeKind] = Tally()
        reaped = 0
        for msg, res in zip(batch, result.results, strict=False):  # the hot part: ~0.1 µs
            kind = type(msg)
            if kind is Outcome:
                if type(res) is Accepted:
                    kinds[msg.kind] += 1  # type: ignore[union-attr,index]
            elif kind is ReapExpired and isinstance(res, int):
                reaped += res
        for outcome, n in kinds.items():
            self.outcomes.labels(outcome.value).inc(n)
        if reaped:
            self.reaps.inc(reaped)

    def submit_committed(self, seconds: float) -> None:
        self.submit_seconds.observe(seconds)

    # --- exposition ------------------------------------------------------------------

    async def render(self) -> bytes:
        """The text exposition, with the view's figures read now."""
        self._snapshot = await self.view.metrics()
        try:
            return generate_latest(self.registry)
        finally:
            self._snapshot = None


class _SnapshotCollector:
    """The figures read at scrape time (see the module docstring)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        snap = self._metrics._snapshot
        if snap is None:
            return
        jobs = GaugeMetricFamily("syncward_jobs", "Jobs by state.", labels=["state"])
        for state in JobState:
            jobs.add_metric([state.value], snap.counts.get(state, 0))
        yield jobs
        yield GaugeMetricFamily("syncward_healthy", "1 when /health answers 200.",
                                value=1 if snap.healthy else 0)
        if snap.paused is not None:
            yield GaugeMetricFamily("syncward_paused", "1 while leasing is paused.",
                                    value=1 if snap.paused else 0)
        yield from _counters(snap)
        yield from _reconciliation(snap)
        yield from _drift(snap)
        yield from _runtime_gauges(snap)


def _counter(name: str, doc: str, value: int | None) -> Iterator[Metric]:
    if value is not None:
        yield CounterMetricFamily(name, doc, value=value)


def _counters(snap: MetricsSnapshot) -> Iterator[Metric]:
    yield from _counter("syncward_commits", "Batches committed by the syncer.", snap.commits)
    yield from _counter("syncward_commit_failures", "Commits that failed and were retried.",
                        snap.commit_failures)
    yield from _counter("syncward_rejected_writes", "Writes refused on their own (stale "
                        "fences: a lost lease's late writes; illegal transitions).",
                        snap.rejected)
    restarts = CounterMetricFamily("syncward_actor_restarts", "Actor restarts, by actor.",
                                   labels=["actor"])
    for actor, n in sorted(snap.restarts.items()):
        restarts.add_metric([actor], n)
    yield restarts


def _reconciliation(snap: MetricsSnapshot) -> Iterator[Metric]:
    if snap.reconcile_cycles is None:
        return
    yield CounterMetricFamily("syncward_reconciliation_cycles", "Reconciliations run "
                              "(start-up, periodic, liveness, manual).",
                              value=snap.reconcile_cycles)
    fixed = CounterMetricFamily("syncward_reconciliation_issues_fixed", "What "
                                "reconciliations fixed, by kind.", labels=["kind"])
    for kind in FIXES:
        fixed.add_metric([kind], snap.reconcile_fixed.get(kind, 0))
    yield fixed
    yield SummaryMetricFamily("syncward_reconciliation_duration_seconds", "Time "
                              "reconciliations took, from asking to commit.",
                              count_value=snap.reconcile_cycles,
                              sum_value=snap.reconcile_seconds)


def _drift(snap: MetricsSnapshot) -> Iterator[Metric]:
    if snap.drift_checks is not None:
        yield CounterMetricFamily("syncward_stats_recounts", "Recounts of the rows checked "
                                  "against the kept counts.", value=snap.drift_checks)
    if snap.drift_last is not None:
        yield GaugeMetricFamily("syncward_stats_drift", "Jobs the last recount found "
                                "miscounted (must be 0).", value=snap.drift_last)
    yield from _counter("syncward_stats_drift_found", "Jobs found miscounted, over all "
                        "recounts (must be 0).", snap.drift_total)


def _runtime_gauges(snap: MetricsSnapshot) -> Iterator[Metric]:
    if snap.last_commit_age is not None:
        yield GaugeMetricFamily("syncward_syncer_last_commit_age_seconds", "Seconds since "
                                "the syncer's last commit.", value=snap.last_commit_age)
    if snap.in_hand is not None:
        yield GaugeMetricFamily("syncward_jobs_in_hand", "Jobs the downloaders run now.",
                                value=snap.in_hand)
    if snap.mailboxes:
        queued = GaugeMetricFamily("syncward_mailbox_queued", "Messages waiting, by "
                                   "mailbox.", labels=["mailbox"])
        for name, n in sorted(snap.mailboxes.items()):
            queued.add_metric([name], n)
        yield queued
    if snap.sources:
        lag = GaugeMetricFamily("syncward_source_lag", "Entries a source has read and not "
                                "yet acknowledged upstream.", labels=["source"])
        pending = GaugeMetricFamily("syncward_source_pending", "Entries waiting upstream "
                                    "(as the source last saw it).", labels=["source"])
        for name, figures in sorted(snap.sources.items()):
            if "lag" in figures:
                lag.add_metric([name], figures["lag"])
            if "pending" in figures:
                pending.add_metric([name], figures["pending"])
        yield lag
        yield pending
