"""What the runtime gives its operators: continuous reconciliation, recounts on demand,
progress of the jobs in hand, and a health that ``syncward status`` reads from outside.

The ghost-worker incident as a test: a worker row says "running" for a boot that is not
alive; the next periodic cycle marks it dead, the history and the metrics say so, and
the start-up report that ``status`` shows is not overwritten by cycles that find nothing.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
from typing import TYPE_CHECKING

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families
from web_helpers import AUTH, QUICK, TOKEN, FlakyStore, client, identities, mixed

from syncward import Context, Job, Runtime, job_key
from syncward.actors._periodic import LoopActor
from syncward.cli.status import collect_status
from syncward.errors import InvalidJob
from syncward.messages import Reconcile, RegisterWorker, Reply
from syncward.runtime import _StoreHooks
from syncward.store import Liveness
from syncward.store.sqlite import SQLiteStore
from syncward.testing import FakeClock
from syncward.web import create_app

if TYPE_CHECKING:
    from pathlib import Path


def samples(text: str, name: str) -> dict[str, float]:
    """``name``'s samples in a ``/metrics`` text, by their labels' values joined."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                found[",".join(s.labels.values())] = s.value
    return found


async def test_a_ghost_worker_is_marked_dead_by_the_next_periodic_cycle() -> None:
    clock = FakeClock()
    with anyio.fail_after(10):
        async with Runtime(mixed, store="memory://", syncer=QUICK, clock=clock,
                           reconcile_every=30.0) as rt:
            app = create_app(rt)
            startup = await rt.store.get_meta("last_reconcile")
            # A cycle that finds nothing: recorded, and the start-up record is kept.
            clock.advance(30.0)
            await rt.reconciliations.wait_for(2)
            clean = rt.reconciliations.cycles()[-1]
            assert (clean.origin, clean.fixed, clean.report.dry_run) == ("periodic", 0, False)
            assert await rt.store.get_meta("last_reconcile") == startup
            (me,) = [w for w in await rt.store.workers() if w.name == rt.worker]
            assert me.heartbeat_at == clock.now()  # the cycle's heartbeat
            # A ghost: "running" in the store, for a boot that is not alive.
            ghost = (await rt.store.apply([RegisterWorker("ghost-boot", 4242, "elsewhere",
                                                          Reply())], now=clock.now())
                     ).results[0]
            clock.advance(30.0)
            await rt.reconciliations.wait_for(3)
            cycle = rt.reconciliations.cycles()[-1]
            assert cycle.origin == "periodic"
            assert cycle.report.workers_marked_dead == (ghost,)
            rows = {w.name: w.status for w in await rt.store.workers()}
            assert rows == {rt.worker: "running", ghost: "dead"}
            async with client(app) as c:
                rec = (await c.get("/api/reconciliation")).json()
                assert rec["cycles_total"] == 3
                assert rec["cycles"][0]["workers_marked_dead"] == 1
                metrics = (await c.get("/metrics")).text
            assert samples(metrics, "syncward_reconciliation_cycles_total") == {"": 3}
            fixed = samples(metrics, "syncward_reconciliation_issues_fixed_total")
            assert fixed == {"leases_requeued": 0, "leases_failed": 0,
                             "workers_marked_dead": 1, "runs_interrupted": 0}
            assert samples(metrics, "syncward_reconciliation_duration_seconds_count") == {
                "": 3}
            await app.aclose()


async def test_a_recount_on_demand_finds_drift_and_corrects_it(tmp_path: Path) -> None:
    """Rows changed behind the runtime's back (on SQLite, by hand): the recount says by
    how much its counts were off, and they are right again afterwards."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    with anyio.fail_after(10):
        async with Runtime(mixed, store=url, syncer=QUICK) as rt:
            await rt.submit(identities(ok=4, bad=0, skip=0))
            await rt.join()
            with sqlite3.connect(tmp_path / "jobs.db", timeout=10) as db:
                db.execute("UPDATE jobs SET state = 'failed' WHERE id = 1")
            app = create_app(rt, admin_token=TOKEN)
            async with client(app) as c:
                refresh = (await c.post("/api/stats/refresh", headers=AUTH)).json()
                health = (await c.get("/health")).json()
                metrics = (await c.get("/metrics")).text
            await app.aclose()
    assert refresh["before"]["succeeded"] == 4 and refresh["before"]["failed"] == 0
    assert refresh["after"]["succeeded"] == 3 and refresh["after"]["failed"] == 1
    assert refresh["drift"] == {"checked": True, "by_state": {"succeeded": 1, "failed": -1},
                                "off": 2, "total": 2}
    assert health["recount"]["drift_total"] == 2 and health["recount"]["last_at"] is not None
    assert samples(metrics, "syncward_stats_drift_found_total") == {"": 2}


async def test_progress_of_the_jobs_in_hand_is_shown_everywhere(tmp_path: Path) -> None:
    await progress_everywhere(tmp_path, status=False)


@pytest.mark.slow
async def test_status_shows_the_progress_of_a_running_runtime(tmp_path: Path) -> None:
    await progress_everywhere(tmp_path, status=True)


async def progress_everywhere(tmp_path: Path, *, status: bool) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    started = anyio.Event()
    release = anyio.Event()

    async def slow(job: Job, ctx: Context) -> None:
        await ctx.stage("DOWNLOADING")
        ctx.progress(3, 10)
        started.set()
        await release.wait()

    key = job_key({"id": "big"})
    with anyio.fail_after(15):
        async with Runtime(slow, store=url, syncer=QUICK) as rt:
            await rt.submit([{"id": "big"}])
            await started.wait()
            (held,) = rt.in_hand()
            assert (held.key, held.progress_done, held.progress_total) == (key, 3, 10)
            app = create_app(rt)
            async with client(app) as c:
                detail = (await c.get(f"/api/jobs/{key}")).json()
                assert detail["progress"] == {"done": 3, "total": 10, "fraction": 0.3}
                assert detail["lease"]["owner"] == rt.worker
                (lease,) = (await c.get("/api/overview")).json()["leases"]
                assert (lease["stage"], lease["progress"]["fraction"]) == ("DOWNLOADING", 0.3)
            await app.aclose()
            if status:  # what `syncward status` shows, as the runtime publishes it each second
                while not (st := await collect_status(url, "jobs.db")).in_hand:
                    await anyio.sleep(0.05)
                assert [(i["key"], i["progress"]["done"]) for i in st.in_hand] == [(key, 3)]
                assert st.healthy and st.as_dict()["health"] == {"status": "ok", "reasons": []}
            release.set()
            await rt.join()


@pytest.mark.slow
async def test_status_sees_failing_commits_of_a_running_runtime(tmp_path: Path) -> None:
    """Through what the runtime publishes (every second), from outside the process."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    inner = await SQLiteStore.open(url)
    store = FlakyStore(inner)
    try:
        with anyio.fail_after(20):
            async with Runtime(mixed, store=store, syncer=QUICK) as rt:  # type: ignore[arg-type]
                store.failing = True
                async with anyio.create_task_group() as tg:
                    tg.start_soon(rt.submit, identities(ok=1, bad=0, skip=0))
                    await store.failed.wait()
                    while True:  # the publisher writes every second; wait for its next
                        st = await collect_status(url, "jobs.db")
                        if not st.healthy:
                            break
                        await anyio.sleep(0.05)
                    (reason,) = st.unhealthy
                    assert reason.startswith("syncer: commits failing")
                    store.failing = False
    finally:
        await inner.aclose()


def test_status_exits_1_when_the_runtime_holding_the_store_is_gone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"

    async def fill() -> None:
        async with Runtime(mixed, store=url, syncer=QUICK) as rt:
            await rt.submit(identities(ok=1, bad=0, skip=0))
            await rt.join()

    anyio.run(fill)
    env = {"PATH": "/usr/bin:/bin", "SYNCWARD_DB": url}
    healthy = subprocess.run([sys.executable, "-m", "syncward.cli", "status"], env=env,
                             capture_output=True, text=True, timeout=30, check=False)
    assert healthy.returncode == 0, healthy.stderr
    assert "Health: ok" in healthy.stdout
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    (tmp_path / "jobs.db.lock").write_text(json.dumps(
        {"pid": int(gone.stdout), "host": socket.gethostname(), "boot_id": "b" * 32,
         "since": "then"}))
    for args in (["status"], ["status", "--json"]):
        sick = subprocess.run([sys.executable, "-m", "syncward.cli", *args], env=env,
                              capture_output=True, text=True, timeout=30, check=False)
        assert sick.returncode == 1, sick.stderr
        assert "is gone (killed or crashed)" in sick.stdout
    assert json.loads(sick.stdout)["health"]["status"] == "unhealthy"


async def test_the_metrics_observer_counts_outcomes_and_latencies() -> None:
    with anyio.fail_after(10):
        async with Runtime(mixed, store="memory://", syncer=QUICK) as rt:
            app = create_app(rt)  # before any work: it sees every commit
            await rt.submit(identities(ok=5, bad=2, skip=1))
            await rt.join()
            async with client(app) as c:
                text = (await c.get("/metrics")).text
            await app.aclose()  # detached: later commits are not its business
            await rt.submit(identities(ok=7, bad=0, skip=0))
            await rt.join()
            async with client(app) as c:
                later = (await c.get("/metrics")).text
    outcomes = samples(text, "syncward_outcomes_total")
    assert outcomes == {"succeeded": 5, "retry": 0, "failed": 2, "skipped": 1}
    assert samples(later, "syncward_outcomes_total") == outcomes
    assert samples(text, "syncward_submit_to_commit_seconds_count") == {"": 1}
    assert samples(text, "syncward_batch_size_sum")[""] >= 8  # every message was in one
    assert samples(text, "syncward_commit_seconds_count")[""] >= 1


async def test_reconcile_when_a_shared_store_sees_a_boot_die(store_url: str) -> None:
    """A Reconcile sent by the store's own keeper (PostgreSQL) is timed and recorded; on
    every store, `Runtime.reconcile` is recorded as a manual cycle."""
    with anyio.fail_after(20):
        async with Runtime(mixed, store=store_url, syncer=QUICK) as rt:
            report = await rt.reconcile()
            assert report.boot_id == rt.boot_id
            dry = await rt.reconcile(dry_run=True)
            assert dry.dry_run
            origins = [c.origin for c in rt.reconciliations.cycles()]
            assert origins == ["startup", "manual"]
            if rt.store.liveness is Liveness.SHARED:  # as its keeper does when a boot dies
                await _StoreHooks(rt).send(Reconcile(rt.boot_id))
                await rt.reconciliations.wait_for(3)
                assert rt.reconciliations.cycles()[-1].origin == "liveness"


async def test_retry_failed_refuses_what_is_not_a_job_key() -> None:
    async with Runtime(mixed, store="memory://", syncer=QUICK) as rt:
        with pytest.raises(InvalidJob):
            await rt.retry_failed(["not-a-key"])
        assert (await rt.retry_failed([])).requeued == 0


class _IdleSource:
    """A source that submits nothing and says where its upstream stands."""

    name = "intake"

    def actor(self, port: object) -> LoopActor:
        class Idle(LoopActor):
            async def _loop(self) -> None:
                await anyio.sleep_forever()
        return Idle()

    def status(self) -> dict[str, int]:
        return {"read": 10, "acked": 7, "pending": 5}


async def test_sources_lag_and_pending_are_metrics() -> None:
    with anyio.fail_after(10):
        async with Runtime(mixed, store="memory://", syncer=QUICK,
                           sources=[_IdleSource()]) as rt:
            app = create_app(rt)
            async with client(app) as c:
                text = (await c.get("/metrics")).text
            await app.aclose()
    assert samples(text, "syncward_source_lag") == {"intake": 3}
    assert samples(text, "syncward_source_pending") == {"intake": 5}
