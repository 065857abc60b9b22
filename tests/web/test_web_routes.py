"""Every route of `syncward.web`, through httpx's ASGI transport, on every store.

The figures the app gives are checked against the store itself: ``/health`` counts and
the ``syncward_jobs`` gauges of ``/metrics`` (parsed with prometheus-client's own parser)
equal what the store counts, for the app over a live runtime and for the read-only
watcher of the same store.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Mount
from web_helpers import AUTH, QUICK, TOKEN, FlakyStore, client, identities, mixed

from syncward import JobState, Runtime, job_key
from syncward.store.memory import MemoryStore
from syncward.web import create_app

if TYPE_CHECKING:
    from pathlib import Path

    import httpx

    from syncward.store.base import StoreReader


def states(counts: dict[JobState, int]) -> dict[str, int]:
    return {s.value: counts[s] for s in JobState}


def gauges(text: str) -> dict[str, Any]:
    """``/metrics`` parsed: family name -> {label values: value} (or a value)."""
    found: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            if labels:
                found.setdefault(sample.name, {})[labels] = sample.value
            else:
                found[sample.name] = sample.value
    return found


def jobs_gauge(text: str) -> dict[str, int]:
    return {dict(labels)["state"]: int(v) for labels, v in gauges(text)["syncward_jobs"].items()}


async def every_job(c: httpx.AsyncClient, **query: str) -> list[dict[str, Any]]:
    """Every job through the keyset pages of ``/api/jobs`` (3 a page)."""
    jobs: list[dict[str, Any]] = []
    after: int | None = None
    while True:
        params = {**query, "limit": "3", **({"after": str(after)} if after is not None else {})}
        page = (await c.get("/api/jobs", params=params)).json()
        jobs.extend(page["jobs"])
        after = page["next_after"]
        if after is None:
            return jobs


async def check_reads(c: httpx.AsyncClient, store: StoreReader) -> None:
    """The read routes that both views serve, against the store's own answers."""
    truth = await store.counts()
    health = await c.get("/health")
    assert health.status_code == 200, health.text
    assert health.json()["counts"] == states(truth)
    assert health.json()["stats_loaded_at"] is not None
    metrics = await c.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert jobs_gauge(metrics.text) == states(truth)
    assert gauges(metrics.text)["syncward_healthy"] == 1
    listed = await every_job(c)
    assert len(listed) == sum(truth.values()) == len({j["key"] for j in listed})
    for state in JobState:
        in_state = await every_job(c, state=state.value)
        assert len(in_state) == truth[state]
        assert all(j["state"] == state.value for j in in_state)
    failed = (await c.get("/api/jobs", params={"state": "failed"})).json()["jobs"]
    assert failed and all("the archive answered 404" in j["error"] for j in failed)
    key = job_key({"id": "ok-0"})
    detail = (await c.get(f"/api/jobs/{key.upper()}")).json()
    row = await store.get_job(key)
    assert row is not None
    assert detail["key"] == key and detail["identity"] == {"id": "ok-0"}
    assert (detail["state"], detail["attempts"]) == ("succeeded", row.attempts)
    assert detail["result"] == {"fetched": "ok-0"} and "payload" not in detail
    overview = (await c.get("/api/overview")).json()
    assert overview["counts"] == states(truth) and len(overview["failures"]) == truth[
        JobState.FAILED]
    assert (await c.get("/")).headers["content-type"].startswith("text/html")
    assert (await c.get("/static/dashboard.js")).status_code == 200


async def test_every_route_over_a_live_runtime(store_url: str) -> None:
    with anyio.fail_after(30):
        async with Runtime(mixed, store=store_url, concurrency=4, syncer=QUICK) as rt:
            await rt.submit(identities())
            await rt.join()
            app = create_app(rt, admin_token=TOKEN)
            async with client(app) as c:
                await check_reads(c, rt.store)
                workers = (await c.get("/api/workers")).json()["workers"]
                assert [w["name"] for w in workers if w["alive"]] == [rt.worker]
                rec = (await c.get("/api/reconciliation")).json()
                assert rec["startup"]["origin"] == "startup" and rec["cycles_total"] >= 1
                await check_admin(c, rt)
            await app.aclose()


async def check_admin(c: httpx.AsyncClient, rt: Runtime) -> None:
    truth = states(await rt.store.counts())
    refresh = await c.post("/api/stats/refresh", headers=AUTH)
    assert refresh.status_code == 200, refresh.text
    assert refresh.json()["before"] == refresh.json()["after"] == truth
    assert refresh.json()["drift"] == {"checked": True, "by_state": {}, "off": 0, "total": 0}
    dry = (await c.post("/api/reconciliation", params={"dry_run": "1"}, headers=AUTH)).json()
    assert dry["dry_run"] is True and dry["leases_requeued"] == 0
    cycles = rt.reconciliations.total
    real = await c.post("/api/reconciliation", headers=AUTH)
    assert real.status_code == 200 and real.json()["dry_run"] is False
    assert rt.reconciliations.total == cycles + 1
    assert rt.reconciliations.cycles()[-1].origin == "manual"
    assert (await c.post("/api/pause", headers=AUTH)).json() == {"paused": True}
    assert (await c.get("/health")).json()["paused"] is True
    bad = job_key({"id": "bad-0"})
    retried = await c.post("/api/jobs/retry", json={"keys": [bad, job_key({"id": "ok-1"})]},
                           headers=AUTH)
    assert retried.json() == {"requeued": 1, "not_requeued": [job_key({"id": "ok-1"})]}
    await rt.wait(lambda s: s.counts[JobState.PLANNED] == 1)  # paused: it stays planned
    row = await rt.store.get_job(bad)
    assert row is not None and (row.state, row.attempts) == (JobState.PLANNED, 0)
    assert (await c.post("/api/resume", headers=AUTH)).json() == {"paused": False}
    await rt.join()  # it fails again (Permanent)
    everything = await c.post("/api/jobs/retry", json={"all": True}, headers=AUTH)
    assert everything.json()["requeued"] == truth["failed"]
    await rt.join()
    metrics = gauges((await c.get("/metrics")).text)
    outcomes = {dict(k)["kind"]: v for k, v in metrics["syncward_outcomes_total"].items()}
    assert outcomes["failed"] == 1 + truth["failed"]  # seen by the app's own observer
    assert metrics["syncward_reconciliation_cycles_total"] == rt.reconciliations.total
    assert metrics["syncward_batch_size_count"] >= 1


async def test_every_read_route_of_a_watcher(store_url: str) -> None:
    """The read-only watcher of a store a runtime is running (and of it stopped)."""
    with anyio.fail_after(30):
        async with Runtime(mixed, store=store_url, concurrency=4, syncer=QUICK) as rt:
            await rt.submit(identities())
            await rt.join()
            app = create_app(store_url, admin_token=TOKEN)
            async with client(app) as c:
                await check_reads(c, rt.store)
                for route, body in (("/api/stats/refresh", None), ("/api/pause", None),
                                    ("/api/jobs/retry", {"all": True})):
                    refused = await c.post(route, json=body, headers=AUTH)
                    assert refused.status_code == 409
                    assert "read-only" in refused.json()["error"]
            await app.aclose()


async def test_health_is_503_while_the_syncer_is_failing() -> None:
    store = FlakyStore(MemoryStore())
    with anyio.fail_after(10):
        async with Runtime(mixed, store=store, syncer=QUICK) as rt:  # type: ignore[arg-type]
            app = create_app(rt)
            async with client(app) as c:
                assert (await c.get("/health")).status_code == 200
                store.failing = True
                submitted = anyio.Event()

                async def submit() -> None:
                    await rt.submit(identities(ok=1, bad=0, skip=0))
                    submitted.set()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(submit)
                    await store.failed.wait()
                    failing = await c.get("/health")
                    assert failing.status_code == 503
                    (reason,) = failing.json()["reasons"]
                    assert reason.startswith("syncer: commits failing")
                    assert "No space left on device" in reason
                    assert failing.json()["status"] == "unhealthy"
                    metrics = gauges((await c.get("/metrics")).text)
                    assert metrics["syncward_healthy"] == 0
                    store.failing = False
                    await submitted.wait()
                assert store.recovered.is_set()
                assert (await c.get("/health")).status_code == 200
            await app.aclose()


BAD_REQUESTS: list[tuple[str, str, Any, int, str]] = [
    ("GET", "/api/jobs/not-a-key", None, 400, "64 hex digits"),
    ("GET", "/api/jobs/" + "a" * 63, None, 400, "64 hex digits"),
    ("GET", "/api/jobs/" + "g" * 64, None, 400, "64 hex digits"),
    ("GET", "/api/jobs/" + "a" * 64, None, 404, "no job"),
    ("GET", "/api/jobs/%00", None, 400, "64 hex digits"),
    ("GET", "/api/jobs?state=done", None, 400, "state: expected one of planned"),
    ("GET", "/api/jobs?limit=0", None, 400, "limit"),
    ("GET", "/api/jobs?limit=-1", None, 400, "limit"),
    ("GET", "/api/jobs?limit=ten", None, 400, "limit"),
    ("GET", "/api/jobs?limit=1001", None, 400, "limit"),
    ("GET", "/api/jobs?after=-5", None, 400, "after"),
    ("GET", "/api/jobs?after=99999999999999999999999", None, 400, "after"),
    ("GET", "/api/nothing-here", None, 404, "no such route"),
    ("POST", "/health", None, 405, "method not allowed"),
    ("GET", "/api/pause", None, 405, "method not allowed"),
    ("POST", "/api/reconciliation?dry_run=maybe", None, 400, "dry_run"),
    ("POST", "/api/jobs/retry", b"{not json", 400, "not valid JSON"),
    ("POST", "/api/jobs/retry", b"", 400, '{"all": true}'),
    ("POST", "/api/jobs/retry", {}, 400, '{"all": true}'),
    ("POST", "/api/jobs/retry", [], 400, '{"all": true}'),
    ("POST", "/api/jobs/retry", {"all": False}, 400, '{"all": true}'),
    ("POST", "/api/jobs/retry", {"keys": "abc"}, 400, "keys"),
    ("POST", "/api/jobs/retry", {"keys": []}, 400, "keys"),
    ("POST", "/api/jobs/retry", {"keys": ["zz"]}, 400, "64 hex digits"),
    ("POST", "/api/jobs/retry", {"keys": [1]}, 400, "64 hex digits"),
    ("POST", "/api/jobs/retry", {"keys": ["a" * 64], "all": True}, 400, '{"all": true}'),
    ("POST", "/api/jobs/retry", b"[" + b'"a",' * 100_000 + b"]", 413, "larger than"),
    ("POST", "/api/jobs/cancel", {}, 400, '{"state": "planned" | "leased"}'),
    ("POST", "/api/jobs/cancel", {"all": True}, 400, '{"keys"'),
    ("POST", "/api/jobs/cancel", {"state": "failed"}, 400, "state"),
    ("POST", "/api/jobs/cancel", {"keys": []}, 400, "keys"),
    ("POST", "/api/jobs/cancel", {"keys": ["zz"]}, 400, "64 hex digits"),
]


async def test_cancel_route_skips_jobs_of_a_live_runtime_and_a_watcher_refuses() -> None:
    with anyio.fail_after(10):
        async with Runtime(mixed, store="memory://", syncer=QUICK) as rt:
            rt.pause()
            await rt.submit([{"id": "ok-1"}, {"id": "ok-2"}, {"id": "ok-3"}])
            app = create_app(rt, admin_token=TOKEN)
            async with client(app) as c:
                one = job_key({"id": "ok-1"})
                done = await c.post("/api/jobs/cancel", json={"keys": [one]}, headers=AUTH)
                assert done.status_code == 200, done.text
                assert done.json() == {"cancelled": 1, "planned": 1, "leased": 0,
                                       "running": [], "already_cancelled": [],
                                       "finished": [], "other_state": [], "not_found": []}
                rest = await c.post("/api/jobs/cancel", json={"state": "planned"},
                                    headers=AUTH)
                assert rest.json()["planned"] == 2
            await app.aclose()
            rt.resume()
            await rt.join()
            assert rt.stats().counts[JobState.SKIPPED] == 3
            watcher = create_app(rt.store, admin_token=TOKEN)
            async with client(watcher) as c:
                refused = await c.post("/api/jobs/cancel", json={"state": "planned"},
                                       headers=AUTH)
                assert refused.status_code == 409
            await watcher.aclose()


async def test_bad_paths_queries_and_bodies_are_4xx_never_500() -> None:
    with anyio.fail_after(10):
        async with Runtime(mixed, store="memory://", syncer=QUICK) as rt:
            app = create_app(rt, admin_token=TOKEN)
            async with client(app) as c:
                for method, path, body, status, needle in BAD_REQUESTS:
                    kwargs: dict[str, Any] = {"headers": AUTH}
                    if isinstance(body, bytes):
                        kwargs["content"] = body
                    elif body is not None:
                        kwargs["json"] = body
                    answer = await c.request(method, path, **kwargs)
                    what = f"{method} {path[:60]} {str(body)[:40]}"
                    assert answer.status_code == status, (what, answer.text)
                    assert needle in answer.json()["error"], (what, answer.text)
            await app.aclose()


async def test_a_store_that_cannot_be_read_is_503_and_nothing_leaks(tmp_path: Path) -> None:
    password = "s3cret-" + os.urandom(4).hex()
    for url in (f"sqlite:///{tmp_path / 'missing.db'}",
                f"postgresql://postgres:{password}@127.0.0.1:{spare_port()}/test"):
        app = create_app(url)
        async with client(app) as c:
            health = await c.get("/health")
            assert health.status_code == 503
            assert health.json()["reasons"][0].startswith("store unreachable")
            assert password not in health.text
            assert gauges((await c.get("/metrics")).text)["syncward_healthy"] == 0
            listing = await c.get("/api/jobs")
            assert listing.status_code == 503 and password not in listing.text
        await app.aclose()


def spare_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_a_watcher_says_a_dead_runtime_is_unhealthy(tmp_path: Path) -> None:
    """A runtime that died holding the store (its lock names a pid that is gone)."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    async with Runtime(mixed, store=url, syncer=QUICK) as rt:
        await rt.submit(identities(ok=2, bad=0, skip=0))
        await rt.join()
    gone = await anyio.run_process([sys.executable, "-c", "import os; print(os.getpid())"])
    pid = int(gone.stdout)
    (tmp_path / "jobs.db.lock").write_text(json.dumps(
        {"pid": pid, "host": socket.gethostname(), "boot_id": "b" * 32, "since": "then"}))
    app = create_app(url)
    async with client(app) as c:
        health = await c.get("/health")
        assert health.status_code == 503
        assert f"pid {pid}" in health.json()["reasons"][0]
        assert "is gone" in health.json()["reasons"][0]
        assert health.json()["counts"]["succeeded"] == 2
    await app.aclose()


async def test_mounted_inside_another_starlette_app() -> None:
    with anyio.fail_after(10):
        async with Runtime(mixed, store="memory://", syncer=QUICK) as rt:
            await rt.submit(identities(ok=3, bad=0, skip=0))
            await rt.join()
            ops = create_app(rt)
            outer = Starlette(routes=[Mount("/ops", app=ops)])
            async with client(outer) as c:
                assert (await c.get("/ops/health")).json()["counts"]["succeeded"] == 3
                page = await c.get("/ops/")
                assert page.status_code == 200 and 'src="static/dashboard.js"' in page.text
                assert "script-src" not in page.headers["content-security-policy"]
                assert (await c.get("/ops/static/dashboard.css")).status_code == 200
                assert (await c.get("/ops/api/overview")).json()["total"] == 3
            await ops.aclose()


@pytest.mark.parametrize("name", ["index.html", "dashboard.js", "dashboard.css"])
def test_the_dashboard_ships_in_the_package_and_loads_nothing_from_elsewhere(name: str) -> None:
    from importlib import resources

    text = resources.files("syncward.web").joinpath("static", name).read_text()
    assert "http://" not in text and "https://" not in text and "//cdn" not in text
    if name == "index.html":
        assert "<script>" not in text and "onclick" not in text  # no inline script


def test_the_public_api_of_syncward_web() -> None:
    import syncward.web

    assert syncward.web.__all__ == sorted(syncward.web.__all__) == [
        "ADMIN_TOKEN_ENV", "OpsApp", "WebConfig", "create_app", "load_admin_token"]
    for name in syncward.web.__all__:
        assert hasattr(syncward.web, name), name
