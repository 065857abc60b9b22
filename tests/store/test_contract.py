"""The store contract: every backend, the same rules (see `syncward.store.apply`).

Each test runs once per backend of `conftest.BACKENDS` and reads state only through the
`StoreReader` protocol. Tests of one backend's own machinery (SQLite's schema, owner lock
and files) live beside it, in ``test_sqlite.py``.
"""

from __future__ import annotations

import json
import random
import unicodedata
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
from store_helpers import (
    T0,
    all_jobs,
    lease,
    mixed_batch,
    new_job,
    prepare_history,
    row,
    snapshot,
    submit,
)

from syncward.errors import StoreError, StoreLocked
from syncward.imports import ImportRecord, to_import_job
from syncward.jobs import JobState, canonical_identity, job_key, op_key
from syncward.messages import (
    Accepted,
    Cancel,
    CancelResult,
    Effect,
    EffectResult,
    Import,
    ImportConflict,
    ImportResult,
    LeaseOrder,
    Outcome,
    OutcomeKind,
    ReapExpired,
    Reconcile,
    ReconcileReport,
    Recount,
    RegisterWorker,
    Rejected,
    Release,
    Renew,
    Reply,
    Requeue,
    RunRejects,
    SetMeta,
    Stage,
    StartRun,
    Submit,
    SubmitResult,
    SyncerMsg,
    WorkerStatus,
)
from syncward.store.apply import GONE, lost_outcome
from syncward.store.base import Liveness

if TYPE_CHECKING:
    from conftest import Backend  # the fixture's type only

    from syncward.jobs import Job
    from syncward.store.base import Store

ACCEPTED = Accepted()
SHARED = ["postgres"]  # the backends several runtimes write at once


# --- identities and payloads ------------------------------------------------------------

NASTY_IDENTITIES = [
    {"q": 'he said "hi"', "s": "it's"},
    {'"': '"', "'": "'"},
    {"semi": "a;b;c;", "stmt": "x'); DROP TABLE jobs; --"},
    {"sql": "' OR 1=1 --"},
    {"'; DROP TABLE jobs; --": "name is an injection too"},
    {"like": "100%_match\\", "ws": " \t\r\n "},
    {"nul": "before\x00after"},
    {"emoji": "\U0001f680\U0001f469\u200d\U0001f4bb\U0001f1eb\U0001f1f7"},
    {"rtl": "\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627 \u202eabc\u202c\u200f"},
    {"combining": "Z\u0324\u0354\u0367\u0311\u0313a\u0308\u0356\u032dl\u036e\u0312g\u0332o"},
    {"nfd": "cafe\u0301", "cafe\u0301": 1},
    {"big": "x" * 10_240},
    {"bigu": "\u00e9\U0001f680\u05e9" * 1_200, "n": 7},
    {"k" * 10_240: "long field name"},
    {"i64": 2**63, "neg": -(2**100), "zero": 0},
]


def nfc_identity(identity: dict[str, Any]) -> dict[str, Any]:
    def n(x: Any) -> Any:
        return unicodedata.normalize("NFC", x) if isinstance(x, str) else x

    return {n(k): n(v) for k, v in identity.items()}


async def test_identities_are_stored_and_read_back_exactly(store: Store) -> None:
    result = await submit(store, *(new_job(i) for i in NASTY_IDENTITIES))
    assert result == SubmitResult(new=len(NASTY_IDENTITIES), duplicates=0)
    for identity in NASTY_IDENTITIES:
        job = await store.get_job(job_key(identity))
        assert job is not None
        assert job.identity == nfc_identity(identity)
        if all(unicodedata.is_normalized("NFC", x)
               for x in (*identity, *identity.values()) if isinstance(x, str)):
            assert job.identity == identity
    # Nothing was interpreted as SQL.
    assert (await store.counts())[JobState.PLANNED] == len(NASTY_IDENTITIES)
    leased = await lease(store, len(NASTY_IDENTITIES), now=T0)
    assert sorted(map(canonical_identity, (j.identity for j in leased))) == sorted(
        map(canonical_identity, NASTY_IDENTITIES))


async def test_payload_json_round_trip(store: Store) -> None:
    payload = {
        "url": "https://example.org/q?a=1&b='2'",
        "nested": {"list": [1, 2.5, None, True, False, "\u00e9\U0001f680"], "empty": {}},
        "big": 2**70,
        "float": 0.1,
        "neg": -1e-300,
        "sql": "' OR 1=1 --;",
        "text": "\u05e9\u05dc\u05d5\u05dd\n" * 2000,
    }
    await submit(store, new_job({"n": 1}, payload=payload))
    assert (await row(store, {"n": 1})).payload == payload
    (job,) = await lease(store, 1, now=T0)
    assert job.payload == payload
    assert job.identity == {"n": 1}


async def test_duplicate_keys_within_and_across_submits(store: Store) -> None:
    a, b = new_job({"n": 1}), new_job({"n": 2})
    result = await store.apply([Submit((a, b, a)), Submit((b,)), Submit((new_job({"n": 3}),))],
                               now=T0)
    assert result.results == [SubmitResult(new=2, duplicates=1),
                              SubmitResult(new=0, duplicates=1),
                              SubmitResult(new=1, duplicates=0)]
    assert result.deltas == {JobState.PLANNED: 3}
    assert (await store.counts())[JobState.PLANNED] == 3


# --- a batch applied twice is a batch applied once ---------------------------------------


async def test_a_batch_applied_twice_gives_the_same_store_as_once(backend: Backend) -> None:
    once = await backend.open("once")
    twice = await backend.open("twice")
    prepared = [await prepare_history(once), await prepare_history(twice)]
    assert prepared[0] == prepared[1]  # same ids and fences in both
    batch = mixed_batch(*prepared[0])
    now = T0 + 10

    first = await once.apply(batch, now=now)
    assert first.results == [
        prepared[0][0], SubmitResult(new=3, duplicates=1), ACCEPTED,
        EffectResult('{"bytes":10}', recorded_before=False), ACCEPTED, ACCEPTED, ACCEPTED,
        ACCEPTED, ACCEPTED, ACCEPTED, 1, 1, "worker-1", ACCEPTED, ACCEPTED,
    ]
    assert (await twice.apply(batch, now=now)).results == first.results
    again = await twice.apply(batch, now=now)
    assert again.deltas == {}
    # The submit delivered again still knows the jobs it created (their rows carry its
    # token): it answers what it answered the first time.
    assert again.results[1] == SubmitResult(new=3, duplicates=1)
    assert again.results[12] == "worker-1"

    ops = [op_key("fetch", prepared[0][1][0].key, part=1)]
    a = await snapshot(once, op_keys=ops)
    b = await snapshot(twice, op_keys=ops)
    assert a == b
    # The comparison covers something: every kind of thing the batch writes is there.
    assert a["ops"] == ((1, 1), ['{"bytes":10}'])
    assert [w.name for w in a["workers"]] == ["worker-1"]
    (run_info, rejects, comparison, _), = a["runs"]
    assert run_info.status == "finished"
    assert [r.line for r in rejects] == [20, 21]
    assert (comparison.entries, comparison.distinct) == (11, 11)
    states = Counter(str(j.state) for j in a["jobs"])
    assert states == {"planned": 7, "leased": 1, "succeeded": 1, "skipped": 1, "failed": 1}


async def test_requeue_then_failure_redelivered(backend: Backend) -> None:
    once = await backend.open("once")
    twice = await backend.open("twice")
    for store in (once, twice):
        await submit(store, new_job({"n": 1}))
        (job,) = await lease(store, 1, now=T0)
    # The requeue was decided at T0: a job that failed after that is not requeued by it.
    batch = [Requeue(decided_at=T0), Outcome(job.id, job.fence, OutcomeKind.FAILED, error="404")]
    await once.apply(batch, now=T0 + 1)
    await twice.apply(batch, now=T0 + 1)
    await twice.apply(batch, now=T0 + 1)
    assert (await row(twice, {"n": 1})).state == (await row(once, {"n": 1})).state


# --- fencing -----------------------------------------------------------------------------


async def test_stale_fence_is_rejected_and_the_new_owner_wins(store: Store) -> None:
    await submit(store, new_job({"n": 1}), new_job({"n": 2}))
    (old,) = await lease(store, 1, now=T0, owner="w-old", seconds=10)
    assert old.identity == {"n": 1}

    # The old owner goes quiet; its lease expires and the reaper sends the job back.
    assert await store.expired_leases(T0 + 20, limit=10) == [(old.id, old.fence)]
    reaped = await store.apply([ReapExpired(((old.id, old.fence),))], now=T0 + 20)
    assert reaped.results == [1]
    lost = await row(store, {"n": 1})
    assert lost.state is JobState.PLANNED
    assert lost.last_error == "lease lost at stage start, attempt 1 (lease expired)"

    leased = {j.id: j for j in await lease(store, 2, now=T0 + 20, owner="w-new", seconds=10)}
    new = leased.pop(old.id)
    (other,) = leased.values()
    assert new.attempt == 2
    assert new.fence > old.fence
    rejections = await store.rejection_count()

    result = await store.apply([
        Stage(old.id, old.fence, "late-stage"),
        Outcome(old.id, old.fence, OutcomeKind.SUCCEEDED, result='"old"'),
        Submit((new_job({"n": 3}),)),
        Outcome(other.id, other.fence, OutcomeKind.SUCCEEDED, result='"other"'),
        Outcome(new.id, new.fence, OutcomeKind.SUCCEEDED, result='"new"'),
        Outcome(old.id, old.fence, OutcomeKind.FAILED, error="late failure"),
        Renew(((old.id, old.fence, 30.0),)),
    ], now=T0 + 21)

    r = result.results
    assert isinstance(r[0], Rejected) and "stale fence" in r[0].reason
    assert isinstance(r[1], Rejected) and "stale fence" in r[1].reason
    assert r[2:5] == [SubmitResult(new=1, duplicates=0), ACCEPTED, ACCEPTED]
    assert isinstance(r[5], Rejected)
    assert isinstance(r[6], Rejected)
    assert await store.rejection_count() == rejections + 4
    job = await row(store, {"n": 1})
    # The new owner's outcome stands; the stale stage report was not applied.
    assert (job.state, job.result, job.stage) == (JobState.SUCCEEDED, "new", None)
    assert (await row(store, {"n": 2})).result == "other"
    assert (await row(store, {"n": 3})).state is JobState.PLANNED
    assert result.deltas == {JobState.LEASED: -2, JobState.SUCCEEDED: 2, JobState.PLANNED: 1}


async def test_an_outcome_delivered_again_is_accepted_once(store: Store) -> None:
    await submit(store, new_job({"n": 1}))
    (job,) = await lease(store, 1, now=T0)
    done = Outcome(job.id, job.fence, OutcomeKind.SUCCEEDED, result='"ok"')
    first = await store.apply([done], now=T0 + 1)
    again = await store.apply([done], now=T0 + 2)
    assert (first.results, again.results) == ([ACCEPTED], [ACCEPTED])
    assert (first.deltas, again.deltas) == ({JobState.LEASED: -1, JobState.SUCCEEDED: 1}, {})
    # Twice in one batch: the second is stale (the first ended the lease in this batch).
    await submit(store, new_job({"n": 2}))
    (other,) = await lease(store, 1, now=T0 + 3)
    twice = Outcome(other.id, other.fence, OutcomeKind.SKIPPED, error="dup")
    both = await store.apply([twice, twice], now=T0 + 4)
    assert both.results[0] == ACCEPTED and isinstance(both.results[1], Rejected)
    assert both.deltas == {JobState.LEASED: -1, JobState.SKIPPED: 1}


async def test_a_renewal_that_raced_the_reaper_wins(store: Store) -> None:
    await submit(store, new_job({"n": 1}))
    (job,) = await lease(store, 1, now=T0, seconds=10)
    expired = await store.expired_leases(T0 + 11, limit=10)  # the reaper's view ...
    await store.apply([Renew(((job.id, job.fence, 30.0),))], now=T0 + 11)  # ... then a renewal
    result = await store.apply([ReapExpired(tuple(expired))], now=T0 + 12)
    assert result.results == [0]
    assert result.deltas == {}
    current = await row(store, {"n": 1})
    assert (current.state, current.fence, current.lease_expires_at) == (
        JobState.LEASED, job.fence, T0 + 41)


async def test_rejected_messages_do_not_disturb_their_batch(store: Store) -> None:
    await submit(store, new_job({"n": 1}), new_job({"n": 2}))
    a, b = await lease(store, 2, now=T0)
    await store.apply([Outcome(a.id, a.fence, OutcomeKind.SUCCEEDED, result="1")], now=T0 + 1)

    result = await store.apply([
        Requeue(state=JobState.SUCCEEDED),  # succeeded -> planned is illegal
        Requeue(state=JobState.PLANNED),  # so is planned -> planned
        Outcome(999, 1, OutcomeKind.SUCCEEDED),  # unknown job
        Stage(a.id, a.fence, "after the end"),  # job no longer leased
        Submit((new_job({"n": 3}),)),
        Stage(b.id, b.fence, "half-way"),
    ], now=T0 + 2)

    r = result.results
    assert isinstance(r[0], Rejected) and "succeeded -> planned" in r[0].reason
    assert isinstance(r[1], Rejected) and "planned -> planned" in r[1].reason
    assert isinstance(r[2], Rejected) and "unknown job id 999" in r[2].reason
    assert isinstance(r[3], Rejected)
    assert r[4:] == [SubmitResult(new=1, duplicates=0), ACCEPTED]
    assert (await row(store, {"n": 1})).state is JobState.SUCCEEDED
    assert (await row(store, {"n": 2})).stage == "half-way"
    assert (await row(store, {"n": 3})).state is JobState.PLANNED
    assert await store.rejection_count() == 4


# --- retry, release, leasing ------------------------------------------------------------


async def test_retry_until_attempts_are_exhausted(store: Store) -> None:
    ident = {"url": "https://example.org/flaky"}
    await submit(store, new_job(ident, max_attempts=3))
    now = T0
    for attempt in (1, 2):
        (job,) = await lease(store, 1, now=now)
        assert (job.attempt, job.max_attempts) == (attempt, 3)
        result = await store.apply(
            [Outcome(job.id, job.fence, OutcomeKind.RETRY, error="HTTP 503", retry_at=now + 100)],
            now=now)
        assert result.results == [ACCEPTED]
        current = await row(store, ident)
        assert (current.state, current.attempts, current.next_attempt_at, current.last_error) == (
            JobState.PLANNED, attempt, now + 100, "HTTP 503")
        assert await store.next_due() == now + 100
        assert await store.retrying_count() == 1
        assert await lease(store, 1, now=now + 99) == []  # not due before retry_at
        now += 100

    (job,) = await lease(store, 1, now=now)
    assert job.attempt == 3
    await store.apply(
        [Outcome(job.id, job.fence, OutcomeKind.RETRY, error="HTTP 503", retry_at=now + 100)],
        now=now)
    dead = await row(store, ident)
    assert dead.state is JobState.FAILED
    assert dead.last_error is not None
    assert "attempts exhausted (3/3)" in dead.last_error
    assert "HTTP 503" in dead.last_error
    assert [j.key for j in await store.jobs_in_state(JobState.FAILED)] == [job.key]
    assert await store.next_due() is None

    # The dead-letter path: a person re-queues it, with its attempts reset.
    assert (await store.apply([Requeue(keys=(job.key,))], now=now + 1)).results == [1]
    again = await row(store, ident)
    assert (again.state, again.attempts) == (JobState.PLANNED, 0)
    assert await store.next_due() == now + 1


async def test_release_gives_the_lease_back_without_counting_the_attempt(store: Store) -> None:
    await submit(store, new_job({"n": 1}))
    (job,) = await lease(store, 1, now=T0)
    result = await store.apply([Release(job.id, job.fence)], now=T0 + 1)
    assert result.deltas == {JobState.LEASED: -1, JobState.PLANNED: 1}
    released = await row(store, {"n": 1})
    assert (released.state, released.attempts, released.lease_owner) == (JobState.PLANNED, 0, None)
    (again,) = await lease(store, 1, now=T0 + 1)
    assert again.attempt == 1


async def test_leasing_takes_due_jobs_oldest_due_first(store: Store) -> None:
    await submit(store, *(new_job({"n": i}, max_attempts=5) for i in range(6)))
    jobs = {int(j.identity["n"]): j for j in await lease(store, 6, now=T0)}
    # Send them back due at different times: n=5 first, then 3, then 1, then 0/2/4 at once.
    due = {5: T0 + 10, 3: T0 + 20, 1: T0 + 30, 0: T0 + 40, 2: T0 + 40, 4: T0 + 40}
    await store.apply([Outcome(jobs[n].id, jobs[n].fence, OutcomeKind.RETRY, error="later",
                               retry_at=at) for n, at in due.items()], now=T0 + 1)
    assert await store.next_due() == T0 + 10
    assert await lease(store, 6, now=T0 + 9) == []
    first = await lease(store, 6, now=T0 + 25)
    assert [j.identity["n"] for j in first] == [5, 3]
    rest = await lease(store, 2, now=T0 + 100)
    assert [j.identity["n"] for j in rest] == [1, 0]  # ties broken by id (submit order)
    last = await lease(store, 10, now=T0 + 100)
    assert [j.identity["n"] for j in last] == [2, 4]
    leased = {j.id: j for j in [*first, *rest, *last]}
    assert all(j.fence == jobs[int(j.identity["n"])].fence + 1 for j in leased.values())
    assert all(j.attempt == 2 for j in leased.values())
    assert [lr.job_id for lr in await store.active_leases()] != []


async def test_per_job_lease_seconds_and_expiry(store: Store) -> None:
    await submit(store, new_job({"n": 1}, lease_seconds=5.0), new_job({"n": 2}))
    short, long = sorted(await lease(store, 2, now=T0, seconds=60.0),
                         key=lambda j: j.identity["n"])
    assert (short.lease_seconds, short.lease_expires_at) == (5.0, T0 + 5)
    assert (long.lease_seconds, long.lease_expires_at) == (60.0, T0 + 60)
    assert await store.expired_leases(T0 + 5, limit=10) == [(short.id, short.fence)]
    assert await store.expired_leases(T0 + 4, limit=10) == []
    held = await store.leased_jobs("boot-1", default_lease_seconds=60.0)
    assert [(j.id, j.fence, j.lease_seconds) for j in held] == [
        (short.id, short.fence, 5.0), (long.id, long.fence, 60.0)]
    assert await store.leased_jobs("another-boot", default_lease_seconds=60.0) == []


# --- reconciliation, per the store's liveness rule --------------------------------------


async def _two_boots(store: Store) -> dict[str, Job]:
    await submit(store, new_job({"n": "a"}, max_attempts=3), new_job({"n": "b"}, max_attempts=1),
                 new_job({"n": "c"}))
    await store.apply([RegisterWorker("old", 100, "h", Reply())], now=T0)
    old = {str(j.identity["n"]): j for j in await lease(store, 2, now=T0, boot="old")}
    a = old["a"]
    await store.apply([Stage(a.id, a.fence, "downloaded")], now=T0 + 1)
    await store.apply([RegisterWorker("new", 200, "h", Reply())], now=T0 + 2)
    (c,) = await lease(store, 1, now=T0 + 2, boot="new")
    return {**old, "c": c}


def _check_report(report: object, *, dry_run: bool) -> None:
    assert isinstance(report, ReconcileReport)
    assert (report.boot_id, report.dry_run) == ("new", dry_run)
    assert (report.leases_requeued, report.leases_failed) == (1, 1)
    assert report.workers_marked_dead == ("worker-1",)
    assert len(report.lost) == 2
    assert any("lease lost at stage downloaded, attempt 1" in x for x in report.lost)


@pytest.mark.parametrize("how", ["apply-dry-run", "message-dry-run", "both"])
async def test_reconcile_dry_run_changes_nothing(store: Store, how: str) -> None:
    await _two_boots(store)
    before = await snapshot(store)
    msg_dry = how != "apply-dry-run"
    result = await store.apply([Reconcile("new", dry_run=msg_dry)], now=T0 + 5,
                               dry_run=how != "message-dry-run")
    _check_report(result.results[0], dry_run=msg_dry)
    if msg_dry:  # a dry-run Reconcile in a committed batch must not feed the stats-keeper
        assert result.deltas == {}
    else:  # a rolled-back batch reports what it would have done
        assert result.deltas == {JobState.LEASED: -2, JobState.PLANNED: 1, JobState.FAILED: 1}
    assert await snapshot(store) == before


async def test_reconcile_requeues_or_fails_leases_of_dead_boots(store: Store) -> None:
    """A boot the store proves dead loses its leases at once: every other boot for an
    exclusive store, a boot that holds no lock for a shared one ("old" never attached)."""
    jobs = await _two_boots(store)
    result = await store.apply([Reconcile("new")], now=T0 + 5)
    _check_report(result.results[0], dry_run=False)
    assert result.deltas == {JobState.LEASED: -2, JobState.PLANNED: 1, JobState.FAILED: 1}

    a = await row(store, {"n": "a"})
    assert (a.state, a.attempts, a.stage, a.next_attempt_at, a.lease_owner) == (
        JobState.PLANNED, 1, "downloaded", T0 + 5, None)
    assert a.last_error == "lease lost at stage downloaded, attempt 1 (its process is gone)"
    b = await row(store, {"n": "b"})
    assert b.state is JobState.FAILED
    assert b.last_error == "lease lost at stage start, attempt 1 (its process is gone)"
    c = await row(store, {"n": "c"})  # this boot's lease is not touched
    assert (c.state, c.fence) == (JobState.LEASED, jobs["c"].fence)
    assert {w.name: w.status for w in await store.workers()} == {
        "worker-1": "dead", "worker-2": "running"}
    meta = json.loads(await store.get_meta("last_reconcile") or "{}")
    assert (meta["leases_requeued"], meta["leases_failed"]) == (1, 1)

    # The old owner's late outcome is fenced off; the retried job resumes at its stage.
    late = await store.apply([Outcome(jobs["a"].id, jobs["a"].fence, OutcomeKind.SUCCEEDED)],
                             now=T0 + 6)
    assert isinstance(late.results[0], Rejected)
    (retried,) = await lease(store, 1, now=T0 + 6, boot="new")
    assert (retried.identity, retried.attempt, retried.stage) == ({"n": "a"}, 2, "downloaded")

    again = await store.apply([Reconcile("new")], now=T0 + 7)
    report = again.results[0]
    assert isinstance(report, ReconcileReport)
    assert (report.leases_requeued, report.leases_failed, report.workers_marked_dead) == (0, 0, ())


@pytest.mark.parametrize("backend", SHARED, indirect=True)
async def test_a_shared_store_keeps_the_leases_of_a_live_boot(backend: Backend) -> None:
    """(Shared stores only: an exclusive one has one owner, so no other boot is alive.)"""
    first = await backend.open()
    assert first.liveness is Liveness.SHARED
    second = await backend.open()  # another runtime on the same store, alive
    await second.attach("alive")
    await submit(first, new_job({"n": 1}), new_job({"n": 2}))
    await second.apply([RegisterWorker("alive", 2, "h", Reply())], now=T0)
    (theirs,) = await lease(second, 1, now=T0, boot="alive")
    await first.apply([RegisterWorker("gone", 1, "h", Reply())], now=T0)
    (lost,) = await lease(first, 1, now=T0, boot="gone")  # "gone" holds no lock
    result = await first.apply([Reconcile("me")], now=T0 + 1)
    report = result.results[0]
    assert isinstance(report, ReconcileReport)
    assert (report.leases_requeued, report.workers_marked_dead) == (1, ("worker-2",))
    kept = await first.get_job(theirs.key)
    assert kept is not None and (kept.state, kept.fence) == (JobState.LEASED, theirs.fence)
    back = await first.get_job(lost.key)
    assert back is not None and back.state is JobState.PLANNED
    # When the live one's process ends, its lock goes with its connection.
    await second.aclose()
    again = (await first.apply([Reconcile("me")], now=T0 + 2)).results[0]
    assert isinstance(again, ReconcileReport)
    assert (again.leases_requeued, again.workers_marked_dead) == (1, ("worker-1",))


async def test_reconcile_interrupts_the_runs_of_other_boots_only(store: Store) -> None:
    mine = await store.apply([StartRun("t-new", "b.txt", {}, Reply(), boot_id="new")], now=T0)
    theirs = await store.apply([StartRun("t-old", "a.txt", {}, Reply(), boot_id="old")], now=T0)
    result = await store.apply([Reconcile("new")], now=T0 + 1)
    report = result.results[0]
    assert isinstance(report, ReconcileReport) and report.runs_interrupted == 1
    old_run, new_run = theirs.results[0], mine.results[0]
    assert isinstance(old_run, int) and isinstance(new_run, int)
    old_info, new_info = await store.run_info(old_run), await store.run_info(new_run)
    assert old_info is not None and new_info is not None
    assert (old_info.status, old_info.finished_at) == ("interrupted", T0 + 1)
    assert (new_info.status, new_info.finished_at) == ("running", None)


@pytest.mark.parametrize(("attempts", "max_attempts", "stage"),
                         [(1, 3, None), (2, 3, "fetched"), (3, 3, "fetched"), (1, 1, None)])
async def test_lost_lease_rule_and_its_sql_twin_agree(backend: Backend, attempts: int,
                                                      max_attempts: int, stage: str | None
                                                      ) -> None:
    """A lease lost to reconciliation (set-based) and one reaped (row by row) end alike."""
    reaped_store = await backend.open("reaped")
    lost_store = await backend.open("lost")
    for store in (reaped_store, lost_store):
        await submit(store, new_job({"n": 1}, max_attempts=max_attempts))
        for i in range(attempts):
            (job,) = await lease(store, 1, now=T0 + i, boot="old", seconds=1.0)
            if stage is not None:
                await store.apply([Stage(job.id, job.fence, stage)], now=T0 + i)
            if i < attempts - 1:
                await store.apply([Outcome(job.id, job.fence, OutcomeKind.RETRY, error="e",
                                           retry_at=T0 + i)], now=T0 + i)
        if store is reaped_store:
            await store.apply([ReapExpired(((job.id, job.fence),))], now=T0 + 50)
        else:
            await store.apply([Reconcile("new")], now=T0 + 50)
    reaped, lost = await row(reaped_store, {"n": 1}), await row(lost_store, {"n": 1})
    target, note = lost_outcome(attempts, max_attempts, stage, GONE)
    assert target is (JobState.FAILED if attempts == max_attempts else JobState.PLANNED)
    assert (lost.state, lost.last_error) == (target, note)
    assert reaped.state is target
    assert reaped.last_error == note.replace(GONE, "lease expired")
    assert (lost.attempts, lost.next_attempt_at, lost.lease_owner) == (
        reaped.attempts, reaped.next_attempt_at, reaped.lease_owner)


# --- cancel ------------------------------------------------------------------------------


async def test_cancel_skips_planned_and_leased_jobs_and_leaves_finished_ones(
        store: Store) -> None:
    await submit(store, *(new_job({"n": i}) for i in range(1, 6)))
    done, running = await lease(store, 2, now=T0)
    await store.apply([Outcome(done.id, done.fence, OutcomeKind.SUCCEEDED, result='"ok"')],
                      now=T0 + 1)
    op = op_key("upload", running.key)
    await store.apply([Stage(running.id, running.fence, "uploaded"),
                       Effect(running.id, running.fence, op, "upload", '{"etag":"A"}')],
                      now=T0 + 2)
    planned, unknown = job_key({"n": 3}), job_key({"n": "nobody"})
    result = await store.apply([Cancel(keys=(done.key, running.key, planned, unknown,
                                             planned), decided_at=T0 + 3)], now=T0 + 3)
    assert result.results == [CancelResult(
        planned=1, leased=1, leases=((running.id, running.fence),), finished=(done.key,),
        not_found=(unknown,))]
    assert result.deltas == {JobState.PLANNED: -1, JobState.LEASED: -1, JobState.SKIPPED: 2}
    cancelled = await row(store, {"n": 2})
    assert (cancelled.state, cancelled.last_error, cancelled.stage, cancelled.lease_owner,
            cancelled.lease_expires_at) == (JobState.SKIPPED, "cancelled", "uploaded", None,
                                            None)
    assert ((await row(store, {"n": 3})).state, (await row(store, {"n": 3})).last_error) == (
        JobState.SKIPPED, "cancelled")
    assert (await row(store, {"n": 1})).state is JobState.SUCCEEDED  # left alone
    assert await store.active_leases() == []
    assert await store.get_op(op) == '{"etag":"A"}'  # a committed effect stays committed

    # The owner of the cancelled lease goes on: everything it sends is stale.
    rejections = await store.rejection_count()
    late = await store.apply([
        Stage(running.id, running.fence, "verified"),
        Effect(running.id, running.fence, op_key("upload", running.key, part=2), "upload",
               '{"etag":"B"}'),
        Renew(((running.id, running.fence, 30.0),)),
        Outcome(running.id, running.fence, OutcomeKind.SUCCEEDED, result='"late"'),
    ], now=T0 + 4)
    assert all(isinstance(r, Rejected) for r in late.results), late.results
    assert late.deltas == {}
    assert await store.rejection_count() == rejections + 4
    after = await row(store, {"n": 2})
    assert (after.state, after.stage, after.result) == (JobState.SKIPPED, "uploaded", None)
    assert await store.ops_count() == (1, 1)
    # Skipped jobs are never leased again; the others are.
    assert sorted(j.identity["n"] for j in await lease(store, 10, now=T0 + 5)) == [4, 5]
    assert await store.counts() == {JobState.PLANNED: 0, JobState.LEASED: 2,
                                    JobState.SUCCEEDED: 1, JobState.FAILED: 0,
                                    JobState.SKIPPED: 2}


async def test_cancel_by_state(store: Store) -> None:
    await submit(store, *(new_job({"n": i}) for i in range(4)))
    (leased,) = await lease(store, 1, now=T0)
    # Created after the cancel was decided (a redelivered Cancel): not cancelled.
    early = await store.apply([Cancel(state=JobState.PLANNED, decided_at=T0 - 1)], now=T0 + 1)
    assert early.results == [CancelResult()] and early.deltas == {}
    planned = await store.apply([Cancel(state=JobState.PLANNED, decided_at=T0 + 1)],
                                now=T0 + 1)
    assert planned.results == [CancelResult(planned=3)]
    assert (await row(store, leased.identity)).state is JobState.LEASED
    both = await store.apply([Cancel(decided_at=T0 + 2)], now=T0 + 2)  # planned and leased
    assert both.results == [CancelResult(leased=1, leases=((leased.id, leased.fence),))]
    assert both.deltas == {JobState.LEASED: -1, JobState.SKIPPED: 1}
    counts = await store.counts()
    assert (counts[JobState.SKIPPED], sum(counts.values())) == (4, 4)
    with pytest.raises(ValueError, match="planned or leased"):
        Cancel(state=JobState.FAILED)


async def test_cancel_keys_in_another_state_are_listed_not_cancelled(store: Store) -> None:
    await submit(store, new_job({"n": 1}), new_job({"n": 2}))
    (leased,) = await lease(store, 1, now=T0)
    other = job_key({"n": 2})
    result = await store.apply([Cancel(keys=(leased.key, other), state=JobState.PLANNED)],
                               now=T0 + 1)
    assert result.results == [CancelResult(planned=1, other_state=(leased.key,))]
    assert (await row(store, leased.identity)).state is JobState.LEASED


async def test_cancel_in_a_batch_sees_and_is_seen_by_its_neighbours(backend: Backend) -> None:
    """The view stays consistent: a stage before the cancel commits, an outcome after it
    is stale; the same batch applied again changes nothing more."""
    once = await backend.open("once")
    twice = await backend.open("twice")
    for store in (once, twice):
        await submit(store, new_job({"n": 1}), new_job({"n": 2}))
        job, other = await lease(store, 2, now=T0)
    batch: list[SyncerMsg] = [
        Stage(job.id, job.fence, "half-way"),
        Cancel(keys=(job.key,), decided_at=T0 + 1),
        Outcome(job.id, job.fence, OutcomeKind.SUCCEEDED, result='"late"'),
        Outcome(other.id, other.fence, OutcomeKind.SUCCEEDED, result='"ok"'),
    ]
    first = await once.apply(batch, now=T0 + 1)
    assert first.results[0] == ACCEPTED
    assert first.results[1] == CancelResult(leased=1, leases=((job.id, job.fence),))
    assert isinstance(first.results[2], Rejected) and first.results[3] == ACCEPTED
    assert first.deltas == {JobState.LEASED: -2, JobState.SKIPPED: 1, JobState.SUCCEEDED: 1}
    await twice.apply(batch, now=T0 + 1)
    again = await twice.apply(batch, now=T0 + 1)  # redelivered after its commit
    assert again.deltas == {}
    assert again.results[1] == CancelResult(already_cancelled=(job.key,))  # said again
    for store in (once, twice):
        cancelled = await row(store, {"n": 1})
        assert (cancelled.state, cancelled.stage, cancelled.result) == (
            JobState.SKIPPED, "half-way", None)
        assert (await row(store, {"n": 2})).state is JobState.SUCCEEDED


# --- the ledger, counts, workers, runs, metadata ------------------------------------------


async def test_effect_first_writer_wins(store: Store) -> None:
    await submit(store, new_job({"n": 1}))
    (job,) = await lease(store, 1, now=T0, seconds=10)
    op = op_key("upload", job.key, part=1)

    first = await store.apply([Effect(job.id, job.fence, op, "upload", '{"etag":"A"}')], now=T0)
    assert first.results == [EffectResult('{"etag":"A"}', recorded_before=False)]
    second = await store.apply([
        Effect(job.id, job.fence, op, "upload", '{"etag":"B"}'),
        Effect(job.id, job.fence, op_key("upload", job.key, part=2), "upload", '{"etag":"C"}'),
    ], now=T0 + 1)
    assert second.results == [EffectResult('{"etag":"A"}', recorded_before=True),
                              EffectResult('{"etag":"C"}', recorded_before=False)]

    # After the lease is lost and granted again, the ledger still answers with the first.
    await store.apply([ReapExpired(((job.id, job.fence),))], now=T0 + 20)
    (again,) = await lease(store, 1, now=T0 + 20)
    third = await store.apply([
        Effect(job.id, job.fence, op, "upload", '{"etag":"stale"}'),
        Effect(again.id, again.fence, op, "upload", '{"etag":"D"}'),
    ], now=T0 + 21)
    assert isinstance(third.results[0], Rejected)
    assert third.results[1] == EffectResult('{"etag":"A"}', recorded_before=True)
    assert await store.get_op(op) == '{"etag":"A"}'
    assert await store.ops_count() == (2, 2)


async def test_effects_of_one_op_key_in_one_batch_first_writer_wins(store: Store) -> None:
    """Two jobs claim the same value in one batch (content dedupe): the first one wins."""
    await submit(store, new_job({"n": 1}), new_job({"n": 2}))
    a, b = await lease(store, 2, now=T0)
    claim = op_key("claim:sha256", "f" * 64)
    result = await store.apply([
        Effect(a.id, a.fence, claim, "claim:sha256", json.dumps(a.key)),
        Effect(b.id, b.fence, claim, "claim:sha256", json.dumps(b.key)),
    ], now=T0 + 1)
    assert result.results == [EffectResult(json.dumps(a.key), recorded_before=False),
                              EffectResult(json.dumps(a.key), recorded_before=True)]
    assert await store.get_op(claim) == json.dumps(a.key)


async def test_recount_equals_counts(store: Store) -> None:
    await submit(store, *(new_job({"n": i}) for i in range(10)))
    leased = await lease(store, 6, now=T0)
    kinds = [OutcomeKind.SUCCEEDED, OutcomeKind.FAILED, OutcomeKind.SKIPPED, OutcomeKind.RETRY]
    await store.apply([Outcome(j.id, j.fence, k) for j, k in zip(leased, kinds, strict=False)],
                      now=T0 + 1)
    result = await store.apply([Recount(reset=True)], now=T0 + 2, recount=True)
    assert result.results == [ACCEPTED]
    counts = await store.counts()
    assert result.counts == counts
    assert counts == {JobState.PLANNED: 5, JobState.LEASED: 2, JobState.SUCCEEDED: 1,
                      JobState.FAILED: 1, JobState.SKIPPED: 1}


async def test_workers_are_named_from_one_counter(store: Store) -> None:
    result = await store.apply([RegisterWorker("b1", 1, "h", Reply()),
                                RegisterWorker("b2", 2, "h", Reply()),
                                RegisterWorker("b1", 1, "h", Reply())], now=T0)
    assert result.results == ["worker-1", "worker-2", "worker-1"]
    await store.apply([WorkerStatus("worker-2", "stopped")], now=T0 + 1)
    assert [(w.name, w.boot_id, w.status) for w in await store.workers()] == [
        ("worker-1", "b1", "running"), ("worker-2", "b2", "stopped")]
    later = await store.apply([RegisterWorker("b3", 3, "h", Reply())], now=T0 + 2)
    assert later.results == ["worker-3"]  # never reused, whatever the listing says


async def test_set_meta_only_if_absent(store: Store) -> None:
    result = await store.apply([SetMeta("consumer", "syncward-1", only_if_absent=True),
                                SetMeta("consumer", "syncward-2", only_if_absent=True),
                                SetMeta("other", "a"), SetMeta("other", "b")], now=T0)
    assert result.results == ["syncward-1", "syncward-1", "a", "b"]
    assert (await store.get_meta("consumer"), await store.get_meta("other")) == (
        "syncward-1", "b")
    assert await store.get_meta("absent") is None


async def test_manifest_comparison(store: Store) -> None:
    run = (await store.apply([StartRun("tok", "m.txt", {"format": "txt"}, Reply())],
                             now=T0)).results[0]
    assert isinstance(run, int)
    entries = [new_job({"n": i % 4}, line=i + 1) for i in range(6)]  # 6 lines, 4 distinct
    await store.apply([Submit(tuple(entries), run_id=run),
                       RunRejects(run, ((7, "bad JSON", "{"),))], now=T0)
    (job,) = await lease(store, 1, now=T0)
    await store.apply([Outcome(job.id, job.fence, OutcomeKind.SUCCEEDED)], now=T0 + 1)
    cmp = await store.compare_run(run)
    assert (cmp.entries, cmp.distinct, cmp.missing, cmp.not_terminal) == (6, 4, [], 3)
    states = await store.run_states(run)
    assert (states[JobState.SUCCEEDED], states[JobState.PLANNED]) == (1, 3)
    assert [(r.line, r.reason, r.raw) for r in await store.run_rejects(run)] == [
        (7, "bad JSON", "{")]
    info = await store.run_info(run)
    assert info is not None and (info.source, info.options, info.status) == (
        "m.txt", {"format": "txt"}, "running")
    assert await store.latest_run() == run
    keys = [job_key({"n": i}) for i in range(6)]
    assert await store.key_states(keys) == {
        keys[i]: (JobState.SUCCEEDED if keys[i] == job.key else JobState.PLANNED)
        for i in range(4)}


async def test_jobs_in_state_pages_by_id(store: Store) -> None:
    await submit(store, *(new_job({"n": i}) for i in range(7)))
    pages: list[list[int]] = []
    after = None
    while page := await store.jobs_in_state(JobState.PLANNED, limit=3, after=after):
        pages.append([j.id for j in page])
        after = page[-1].id
    assert [len(p) for p in pages] == [3, 3, 1]
    flat = [i for p in pages for i in p]
    assert flat == sorted(flat) and len(set(flat)) == 7


async def test_writers_by_liveness_and_readers_beside_them(backend: Backend) -> None:
    """An exclusive store takes one writer at a time; a shared one takes many."""
    writer = await backend.open()
    if writer.liveness is Liveness.EXCLUSIVE:
        with pytest.raises(StoreLocked):
            await backend.open()
    else:
        other = await backend.open()
        await submit(other, new_job({"n": 0}))
        assert (await row(writer, {"n": 0})).state is JobState.PLANNED
    reader = await backend.open(readonly=True)
    await submit(writer, new_job({"n": 1}))
    assert (await row(reader, {"n": 1})).state is JobState.PLANNED
    with pytest.raises(StoreError):
        await reader.apply([Submit((new_job({"n": 2}),))], now=T0)
    await writer.aclose()
    again = await backend.open()  # the lock went with the writer
    assert (await row(again, {"n": 1})).state is JobState.PLANNED


async def test_dry_run_batch_changes_nothing(store: Store) -> None:
    await submit(store, new_job({"n": 1}))
    before = await snapshot(store)
    result = await store.apply([Submit((new_job({"n": 2}),)), RegisterWorker("b", 1, "h", Reply())],
                               now=T0 + 1, dry_run=True,
                               lease=LeaseOrder(5, "w", "b", 10.0))
    assert len(result.leased) == 2 and result.results[1] == "worker-1"
    assert await snapshot(store) == before
    # ... and the store goes on as if it never happened.
    assert (await store.apply([RegisterWorker("b", 1, "h", Reply())], now=T0 + 2)).results == [
        "worker-1"]
    assert [j.identity["n"] for j in await lease(store, 5, now=T0 + 2)] == [1]


# --- deltas always sum to the counts ------------------------------------------------------


def _random_batch(rnd: random.Random, held: list[Job], now: float) -> list[SyncerMsg]:
    batch: list[SyncerMsg] = []
    if rnd.random() < 0.6:
        batch.append(Submit(tuple(new_job({"n": rnd.randrange(60)}, max_attempts=rnd.randint(1, 3))
                                  for _ in range(rnd.randint(1, 6)))))
    for job in rnd.sample(held, k=min(len(held), rnd.randint(0, 5))):
        fence = job.fence if rnd.random() < 0.85 else job.fence - 1  # some stale messages
        pick = rnd.random()
        if pick < 0.45:
            kind = rnd.choice(list(OutcomeKind))
            batch.append(Outcome(job.id, fence, kind, error="e",
                                 retry_at=now + rnd.uniform(0, 30) if rnd.random() < 0.5 else None))
        elif pick < 0.6:
            batch.append(Release(job.id, fence))
        elif pick < 0.75:
            batch.append(Stage(job.id, fence, rnd.choice(["fetched", "parsed"])))
        else:
            batch.append(Renew(((job.id, fence, rnd.uniform(1, 20)),)))
    if rnd.random() < 0.3:
        batch.append(ReapExpired(tuple((j.id, j.fence) for j in held if j.lease_expires_at <= now)))
    if rnd.random() < 0.1:
        batch.append(Requeue(state=rnd.choice([JobState.FAILED, JobState.SKIPPED])))
    if rnd.random() < 0.05:
        batch.append(Reconcile(f"boot-{rnd.randint(1, 2)}", dry_run=rnd.random() < 0.5))
    rnd.shuffle(batch)
    return batch


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_deltas_sum_to_the_counts(store: Store, seed: int) -> None:
    rnd = random.Random(seed)
    running: Counter[JobState] = Counter()
    held: list[Job] = []
    now = T0
    for step in range(80):
        now += rnd.uniform(0, 8)
        order = LeaseOrder(n=rnd.randint(0, 4), owner="w", boot_id=f"boot-{rnd.randint(1, 2)}",
                           default_lease_seconds=rnd.choice([5.0, 15.0]))
        result = await store.apply(_random_batch(rnd, held, now), now=now, lease=order,
                                   recount=step % 10 == 0)
        running.update(result.deltas)
        held = [*held[-30:], *result.leased]
        counts = await store.counts()
        assert {s: running[s] for s in JobState} == counts, f"step {step}"
        if result.counts is not None:
            assert result.counts == counts
    assert sum(counts.values()) > 20
    assert sum(1 for n in counts.values() if n) >= 3  # the walk went somewhere
    assert len(await all_jobs(store)) == sum(counts.values())


async def test_the_totals_survive_the_writer_that_made_them(backend: Backend) -> None:
    """A shared store keeps running totals per writer and folds a stopped or dead
    writer's into a base row: the totals stay equal to the rows."""
    store = await backend.open()
    await store.attach("b1")
    await store.apply([RegisterWorker("b1", 1, "h", Reply())], now=T0)
    await submit(store, *(new_job({"n": i}) for i in range(5)))
    (job,) = await lease(store, 1, now=T0 + 1, boot="b1")
    await store.apply([Outcome(job.id, job.fence, OutcomeKind.SUCCEEDED),
                       WorkerStatus("worker-1", "stopped")], now=T0 + 2)
    after = await store.apply([Recount(reset=True), Submit((new_job({"n": 9}),))], now=T0 + 3)
    assert after.counts == await store.counts()
    assert after.counts == {JobState.PLANNED: 5, JobState.LEASED: 0, JobState.SUCCEEDED: 1,
                            JobState.FAILED: 0, JobState.SKIPPED: 0}
    checked = await store.apply([Recount()], now=T0 + 4)
    assert checked.checked == checked.counts == after.counts


# --- import: jobs created in their states, existing keys never changed --------------------


def imported(identity: dict[str, Any], state: JobState = JobState.PLANNED, *, line: int = 1,
             **fields: Any) -> Any:
    return to_import_job(ImportRecord(identity=identity, state=state, **fields),
                         max_attempts=3, line=line)


def import_result(store_result: Any) -> ImportResult:
    (result,) = store_result.results
    assert isinstance(result, ImportResult)
    return result


async def test_import_creates_jobs_in_each_state(store: Store) -> None:
    msg = Import((
        imported({"n": 1}, line=1),
        imported({"n": 2}, JobState.SUCCEEDED, line=2, result={"bytes": 10}, attempts=2),
        imported({"n": 3}, JobState.FAILED, line=3, error="HTTP 404", attempts=3),
        imported({"n": 4}, JobState.SKIPPED, line=4, error="duplicate content"),
        imported({"n": 5}, JobState.SUCCEEDED, line=5, payload={"url": "u"}),
    ))
    applied = await store.apply([msg], now=T0)
    assert import_result(applied) == ImportResult(
        new={JobState.PLANNED: 1, JobState.SUCCEEDED: 2, JobState.FAILED: 1,
             JobState.SKIPPED: 1})
    assert applied.deltas == {JobState.PLANNED: 1, JobState.SUCCEEDED: 2, JobState.FAILED: 1,
                              JobState.SKIPPED: 1}
    assert await store.counts() == {JobState.PLANNED: 1, JobState.LEASED: 0,
                                    JobState.SUCCEEDED: 2, JobState.FAILED: 1,
                                    JobState.SKIPPED: 1}
    done = await row(store, {"n": 2})
    assert (done.state, done.result, done.attempts, done.max_attempts) == (
        JobState.SUCCEEDED, {"bytes": 10}, 2, 3)
    failed = await row(store, {"n": 3})
    assert (failed.state, failed.last_error, failed.attempts) == (JobState.FAILED, "HTTP 404", 3)
    assert (await row(store, {"n": 5})).payload == {"url": "u"}
    # Only the planned job is leased; a failed one can be requeued (the dead-letter path).
    assert [j.identity for j in await lease(store, 10, now=T0 + 1)] == [{"n": 1}]
    assert (await store.apply([Requeue(keys=(job_key({"n": 3}),))], now=T0 + 2)
            ).results == [1]
    recount = await store.apply([Recount()], now=T0 + 3)
    assert recount.checked == recount.counts == await store.counts()


async def test_import_never_changes_an_existing_job(store: Store) -> None:
    await submit(store, new_job({"n": 1}), new_job({"n": 2}))
    (job,) = [j for j in await lease(store, 2, now=T0 + 1) if j.identity == {"n": 2}]
    await store.apply([Outcome(job.id, job.fence, OutcomeKind.SUCCEEDED, result='{"a":1}')],
                      now=T0 + 2)
    before = await snapshot(store)
    msg = Import((
        imported({"n": 1}, JobState.SUCCEEDED, line=1),  # planned (leased) vs succeeded
        imported({"n": 2}, JobState.SUCCEEDED, line=2, result={"b": 2}),  # same state
        imported({"n": 2}, JobState.PLANNED, line=3),  # planned: already there
        imported({"n": 2}, JobState.FAILED, line=4, error="x"),
    ))
    applied = await store.apply([msg], now=T0 + 3)
    result = import_result(applied)
    assert result.new == {} and result.unchanged == 2 and result.conflicts == 2
    leased_or_planned = (await row(store, {"n": 1})).state
    assert result.conflicts_listed == (
        ImportConflict(job_key({"n": 1}), 1, leased_or_planned, JobState.SUCCEEDED),
        ImportConflict(job_key({"n": 2}), 4, JobState.SUCCEEDED, JobState.FAILED))
    assert applied.deltas == {}
    assert await snapshot(store) == before
    assert (await row(store, {"n": 2})).result == {"a": 1}


async def test_import_lists_conflicts_boundedly_and_counts_them_exactly(store: Store) -> None:
    n = 150
    await store.apply([Import(tuple(imported({"n": i}, JobState.SUCCEEDED, line=i)
                                    for i in range(n)))], now=T0)
    result = import_result(await store.apply(
        [Import(tuple(imported({"n": i}, JobState.SKIPPED, line=i) for i in range(n)))],
        now=T0 + 1))
    assert result.conflicts == n and len(result.conflicts_listed) == 100
    assert [c.line for c in result.conflicts_listed] == list(range(100))


async def test_import_of_a_key_twice_in_one_message(store: Store) -> None:
    result = import_result(await store.apply([Import((
        imported({"n": 1}, JobState.SUCCEEDED, line=1),
        imported({"n": 1}, JobState.SUCCEEDED, line=2),
        imported({"n": 1}, JobState.FAILED, line=3),
    ))], now=T0))
    assert result.new == {JobState.SUCCEEDED: 1}
    assert (result.unchanged, result.conflicts) == (1, 1)
    assert (await row(store, {"n": 1})).state is JobState.SUCCEEDED
    assert (await store.counts())[JobState.SUCCEEDED] == 1


@pytest.mark.parametrize("how", ["apply-dry-run", "message-dry-run"])
async def test_import_dry_run_writes_nothing(store: Store, how: str) -> None:
    await submit(store, new_job({"n": 1}))
    before = await snapshot(store)
    jobs = (imported({"n": 1}, JobState.SUCCEEDED, line=1),
            imported({"n": 2}, JobState.SUCCEEDED, line=2),
            imported({"n": 3}, line=3))
    applied = await store.apply([Import(jobs, dry_run=how == "message-dry-run")], now=T0 + 1,
                                dry_run=how == "apply-dry-run")
    result = import_result(applied)
    assert result.new == {JobState.SUCCEEDED: 1, JobState.PLANNED: 1}
    assert (result.unchanged, result.conflicts) == (0, 1)
    assert result.dry_run is (how == "message-dry-run")
    if how == "message-dry-run":  # committed, so it must not feed the stats-keeper
        assert applied.deltas == {}
    assert await snapshot(store) == before
    # The same import for real agrees with what the dry run said.
    real = import_result(await store.apply([Import(jobs)], now=T0 + 2))
    assert (real.new, real.unchanged, real.conflicts) == (
        result.new, result.unchanged, result.conflicts)


async def test_a_redelivered_import_is_idempotent(store: Store) -> None:
    await submit(store, new_job({"n": 0}))
    msg = Import((imported({"n": 0}, JobState.SUCCEEDED, line=1),
                  imported({"n": 1}, JobState.SUCCEEDED, line=2),
                  imported({"n": 2}, line=3)), token=7)
    first = await store.apply([msg], now=T0)
    after = await snapshot(store)
    again = await store.apply([msg], now=T0 + 1)
    assert import_result(again) == import_result(first)
    assert import_result(first).new == {JobState.SUCCEEDED: 1, JobState.PLANNED: 1}
    assert first.deltas == {JobState.SUCCEEDED: 1, JobState.PLANNED: 1}
    assert again.deltas == {}
    assert await snapshot(store) == after
    # Another import of the same records is no longer "new": they exist.
    other = import_result(await store.apply([Import(msg.jobs)], now=T0 + 2))
    assert other.new == {} and other.unchanged == 2 and other.conflicts == 1


async def test_an_imported_planned_job_runs_like_a_submitted_one(store: Store) -> None:
    await store.apply([Import((imported({"n": 1}, attempts=2),))], now=T0)
    assert (await submit(store, new_job({"n": 1}))) == SubmitResult(new=0, duplicates=1)
    (job,) = await lease(store, 5, now=T0 + 1)
    assert (job.identity, job.attempt, job.max_attempts) == ({"n": 1}, 3, 3)
    await store.apply([Outcome(job.id, job.fence, OutcomeKind.RETRY, error="e")], now=T0 + 2)
    assert (await row(store, {"n": 1})).state is JobState.FAILED  # attempts spent
