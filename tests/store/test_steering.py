"""Priorities and limits per key, on every backend (the store contract's leasing rules).

Leasing takes due jobs by rank (due time minus priority, then id); a runtime that declares
limits leases a job with a limit key only while its key has room (concurrency, a GCRA
rate, no hold). Each test runs once per backend of `store_helpers.BACKENDS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from store_helpers import T0, numbers, submit
from store_helpers import lease_with as lease
from store_helpers import steered_job as job

from syncward.limits import KeyBudget, LimitRule
from syncward.messages import LeaseOrder, Outcome, OutcomeKind
from syncward.store.apply import LIMIT_POLL

if TYPE_CHECKING:
    from conftest import Backend

    from syncward.jobs import Job
    from syncward.store.base import Store

HOST = LimitRule(concurrency=2, rate=None)


async def test_higher_priority_is_leased_first_among_jobs_due_together(backend: Backend
                                                                        ) -> None:
    store = await backend.open()
    await submit(store, job(1), job(2, priority=5), job(3, priority=-5), job(4, priority=50),
                 job(5))
    got = (await lease(store, 5, now=T0)).leased
    assert numbers(got) == [4, 2, 1, 5, 3]


async def test_priority_counts_in_seconds_so_nothing_waits_forever(backend: Backend) -> None:
    store = await backend.open()
    await submit(store, job(1), now=T0)  # due at T0: waiting longest
    await submit(store, job(2, priority=30), now=T0 + 20)  # rank T0 - 10: ahead of job 1
    await submit(store, job(3, priority=30), now=T0 + 60)  # rank T0 + 30: behind job 1
    got = (await lease(store, 3, now=T0 + 60)).leased
    assert numbers(got) == [2, 1, 3]


async def test_a_prioritised_job_not_yet_due_is_not_leased_and_says_when_it_is(
        backend: Backend) -> None:
    store = await backend.open()
    await submit(store, job(1, priority=100), now=T0 + 10)  # due T0 + 10, rank T0 - 90
    assert (await lease(store, 5, now=T0)).leased == []
    assert await store.next_due() == T0 + 10
    assert numbers((await lease(store, 5, now=T0 + 10)).leased) == [1]


async def test_concurrency_per_key_leases_no_more_than_the_key_allows(backend: Backend
                                                                      ) -> None:
    store = await backend.open()
    limits = {"host": HOST}
    await submit(store, *(job(i, key="host:a") for i in range(5)), job(10, key="host:b"),
                 job(20))
    first = (await lease(store, 10, now=T0, limits=limits)).leased
    assert sorted(numbers(first)) == [0, 1, 10, 20]  # two of a, b's one, the unlimited one
    assert (await lease(store, 10, now=T0 + 1, limits=limits)).leased == []
    done = next(j for j in first if j.identity["n"] == 0)
    ended = await lease(store, 10, now=T0 + 2, limits=limits,
                        msgs=[Outcome(done.id, done.fence, OutcomeKind.SUCCEEDED, "null")])
    assert numbers(ended.leased) == [2]  # room again: the next of a, in order


async def test_rate_per_key_spaces_starts_and_says_when_the_next_may_start(backend: Backend
                                                                           ) -> None:
    store = await backend.open()
    limits = {"host": LimitRule(rate=5.0)}  # one start every 0.2 s, burst 1
    await submit(store, *(job(i, key="host:a") for i in range(4)))
    first = await lease(store, 10, now=T0, limits=limits)
    assert numbers(first.leased) == [0]
    assert first.wake_at == T0 + 0.2
    assert (await lease(store, 10, now=T0 + 0.1, limits=limits)).leased == []
    assert numbers((await lease(store, 10, now=T0 + 0.2, limits=limits)).leased) == [1]
    # After a pause the rate does not bank starts beyond the burst:
    assert numbers((await lease(store, 10, now=T0 + 10, limits=limits)).leased) == [2]


async def test_burst_lets_that_many_start_at_once(backend: Backend) -> None:
    store = await backend.open()
    limits = {"host": LimitRule(rate=1.0, burst=3)}
    await submit(store, *(job(i, key="host:a") for i in range(5)))
    assert numbers((await lease(store, 10, now=T0, limits=limits)).leased) == [0, 1, 2]
    assert numbers((await lease(store, 10, now=T0 + 0.5, limits=limits)).leased) == []
    assert numbers((await lease(store, 10, now=T0 + 1.0, limits=limits)).leased) == [3]


async def test_a_held_key_waits_until_the_hold_ends(backend: Backend) -> None:
    store = await backend.open()
    limits = {"host": LimitRule(concurrency=5)}
    await submit(store, *(job(i, key="host:a") for i in range(3)), job(9, key="host:b"))
    got = (await lease(store, 1, now=T0, limits=limits)).leased
    assert numbers(got) == [0]
    told = got[0]
    held = await lease(store, 0, now=T0 + 1, limits=limits, msgs=[Outcome(
        told.id, told.fence, OutcomeKind.RETRY, error="HTTP 429", retry_at=T0 + 30,
        hold_key=True)])
    assert held.leased == []
    during = await lease(store, 10, now=T0 + 2, limits=limits)
    assert numbers(during.leased) == [9]  # the other key is not held
    # A key with room that had fewer due jobs than room is looked at again soon (its
    # others may not be due yet); with only the held key left, the hold says when.
    assert during.wake_at == T0 + 2 + LIMIT_POLL
    assert (await lease(store, 10, now=T0 + 3, limits=limits)).wake_at == T0 + 30
    after = await lease(store, 10, now=T0 + 30, limits=limits)
    assert numbers(after.leased) == [1, 2, 0]  # 0 was due again only at T0 + 30


async def test_limit_keys_without_declared_limits_are_leased_like_any_other(
        backend: Backend) -> None:
    store = await backend.open()
    await submit(store, *(job(i, key="tenant:x") for i in range(3)), job(5, priority=1))
    assert numbers((await lease(store, 10, now=T0)).leased) == [5, 0, 1, 2]
    store2 = await backend.open("other")
    await submit(store2, *(job(i, key="tenant:x") for i in range(3)))
    got = (await lease(store2, 10, now=T0, limits={"host": HOST})).leased
    assert numbers(got) == [0, 1, 2]  # "tenant" is not a limit this runtime declares


async def test_limited_jobs_in_rank_order_among_the_others(backend: Backend) -> None:
    store = await backend.open()
    await submit(store, job(1), now=T0)
    await submit(store, job(2, key="host:a", priority=100), job(3, key="host:a"),
                 now=T0 + 5)
    await submit(store, job(4), now=T0 + 6)
    got = (await lease(store, 10, now=T0 + 10, limits={"host": HOST})).leased
    assert numbers(got) == [2, 1, 3, 4]


async def test_a_rolled_back_limited_lease_leaves_the_rate_state_as_it_was(backend: Backend
                                                                           ) -> None:
    store = await backend.open()
    limits = {"host": LimitRule(rate=1.0)}
    await submit(store, job(1, key="host:a"), job(2, key="host:a"))
    order = LeaseOrder(n=5, owner="w1", boot_id="boot-1", default_lease_seconds=60.0,
                       limits=limits)
    dry = await store.apply([], now=T0, lease=order, dry_run=True)
    assert numbers(dry.leased) == [1]
    assert numbers((await lease(store, 5, now=T0, limits=limits)).leased) == [1]


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_limits_hold_for_every_runtime_of_a_shared_store(backend: Backend) -> None:
    """(Shared stores only.) Two runtimes' stores: the key's room is the cluster's."""
    first = await backend.open()
    second = await backend.open()
    limits = {"host": LimitRule(concurrency=3, rate=100.0, burst=100)}
    await submit(first, *(job(i, key="host:a") for i in range(10)))
    mine = (await lease(first, 2, now=T0, limits=limits)).leased
    theirs = (await lease(second, 10, now=T0, limits=limits)).leased
    assert len(mine) == 2 and len(theirs) == 1  # three in all, whoever asks
    assert (await lease(first, 10, now=T0, limits=limits)).leased == []
    done = theirs[0]
    await second.apply([Outcome(done.id, done.fence, OutcomeKind.SUCCEEDED, "null")], now=T0)
    assert len((await lease(first, 10, now=T0 + 1, limits=limits)).leased) == 1


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_concurrent_limited_leases_of_two_writers_never_exceed_the_key(
        backend: Backend) -> None:
    """(Shared stores only.) Leases racing from two connections are serialised."""
    first = await backend.open()
    second = await backend.open()
    limits = {"host": LimitRule(concurrency=4)}
    await submit(first, *(job(i, key="host:a") for i in range(40)))
    results: list[list[Job]] = []

    async def take(store: Store) -> None:
        for k in range(5):
            results.append((await lease(store, 3, now=T0 + k, limits=limits)).leased)

    async with anyio.create_task_group() as tg:
        tg.start_soon(take, first)
        tg.start_soon(take, second)
    assert sum(len(r) for r in results) == 4


async def test_the_first_prioritised_or_limited_job_is_leased_also_after_a_reopen(
        backend: Backend) -> None:
    """A store of plain jobs leases from the plain index alone until a job with a priority
    or a limit key arrives; from then on (and after reopening it) from all of them."""
    store = await backend.open()
    await submit(store, job(1))
    assert numbers((await lease(store, 5, now=T0)).leased) == [1]
    await submit(store, job(2, priority=5), job(3, key="host:a"), now=T0 + 1)
    await store.aclose()
    again = await backend.open()
    assert numbers((await lease(again, 5, now=T0 + 2)).leased) == [2, 3]


@settings(max_examples=300, deadline=None)
@given(concurrency=st.one_of(st.none(), st.integers(1, 20)),
       rate=st.one_of(st.none(), st.floats(0.1, 1000.0)), burst=st.integers(1, 20),
       leased=st.integers(0, 25), ahead=st.one_of(st.none(), st.floats(-5.0, 5.0)),
       held=st.one_of(st.none(), st.floats(-5.0, 5.0)), n=st.integers(0, 40))
def test_room_and_take_many_are_take_repeated(concurrency: int | None, rate: float | None,
                                              burst: int, leased: int, ahead: float | None,
                                              held: float | None, n: int) -> None:
    """The lease counts a key's room at once; it must be what one take after another
    allows, and leave the same state."""
    if concurrency is None and rate is None:
        rate = 1.0
    rule = LimitRule(concurrency, rate, burst)
    now = 1000.0
    tat = None if ahead is None else now + ahead
    until = None if held is None else now + held
    one = KeyBudget("k", rule, leased, tat, until)
    taken = 0
    while taken < n and one.take(now):
        taken += 1
    many = KeyBudget("k", rule, leased, tat, until)
    room = many.room(now, n)
    many.take_many(now, room)
    assert room == taken
    assert (many.leased, many.tat) == (one.leased, pytest.approx(one.tat))
