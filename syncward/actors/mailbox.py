"""Bounded mailboxes with in-flight tracking: the in-process form of a pending-entries list.

Design note: a mailbox belongs to the supervisor, not to the actor that reads it. A
message taken by a consumer stays *in flight* under that consumer's name until the
consumer acknowledges it (the syncer does so only after its commit). When an actor is
restarted, `redeliver` puts its in-flight messages back at the front, in their order,
so the next incarnation sees them first and nothing taken by a crashed actor is lost.
anyio's memory object streams forget a message once it is received, which is why this
is written here rather than borrowed.

Back-pressure: `send` waits while the queue holds ``capacity`` messages; it never drops.
`send_nowait` raises `MailboxFull` instead. Receivers are woken one at a time (a pool of
a thousand idle downloaders is not stampeded by every job), and a receiver cancelled
after being woken passes the wake-up on.

asyncio only: parking uses `asyncio.Event` and the receive checkpoint `asyncio.sleep(0)`
directly (the runtime runs on asyncio or uvloop); anyio's wrappers cost a lookup of the
running backend on every call, on the path every job takes twice.

Batches: `receive_batch` takes what has accumulated, then keeps taking while other
tasks keep adding (each pass yields once to the event loop), up to ``max_n`` messages
or ``max_delay`` seconds: group commit without a fixed wait on a quiet system.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel

from syncward.errors import MailboxClosed, MailboxFull

__all__ = ["Mailbox", "MailboxStatistics"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class MailboxStatistics:
    name: str
    capacity: int
    queued: int
    in_flight: int
    waiting_senders: int
    waiting_receivers: int
    closed: bool


class Mailbox(Generic[T]):
    """A bounded FIFO of messages with per-consumer in-flight lists. See module docstring."""

    def __init__(self, name: str, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"mailbox {name!r}: capacity must be >= 1, got {capacity}")
        self.name = name
        self.capacity = capacity
        self._items: deque[T] = deque()
        self._inflight: dict[str, deque[T]] = {}
        self._recv_waiters: deque[asyncio.Event] = deque()
        self._send_waiters: deque[asyncio.Event] = deque()
        self._closed = False

    # --- sending ---------------------------------------------------------------------

    async def send(self, item: T) -> None:
        """Deliver ``item``, waiting while the mailbox is full.

        Ordering: messages from one sender arrive in send order. Cancellation: the message
        is either enqueued or not, never half. A send into a mailbox with room completes
        without yielding to the event loop (the hot path of every job); a full one waits.
        Raises:
            MailboxClosed: the mailbox was closed.
        """
        while len(self._items) >= self.capacity and not self._closed:
            await self._park(self._send_waiters, self._wake_sender)
        self._put(item)

    def send_nowait(self, item: T) -> None:
        """Deliver ``item`` now.

        Raises:
            MailboxFull: the mailbox holds ``capacity`` messages.
            MailboxClosed: the mailbox was closed.
        """
        if len(self._items) >= self.capacity and not self._closed:
            raise MailboxFull(self.name, self.capacity)
        self._put(item)

    def _put(self, item: T) -> None:
        if self._closed:
            raise MailboxClosed(self.name)
        self._items.append(item)
        self._wake_receiver()

    # --- receiving -------------------------------------------------------------------

    async def receive(self, consumer: str) -> T:
        """Take the next message; it stays in flight for ``consumer`` until `ack`.

        Always yields to the event loop once, so a consumer of a busy mailbox cannot
        starve other tasks.
        Raises:
            MailboxClosed: closed and empty: nothing more will come.
        """
        if self._items:
            await asyncio.sleep(0)  # the checkpoint, without anyio's backend lookup
        while not self._items:
            if self._closed:
                raise MailboxClosed(self.name)
            await self._park(self._recv_waiters, self._wake_receiver)
        return self._take(consumer, 1)[0]

    async def receive_batch(self, consumer: str, max_n: int, *, max_delay: float = 0.005,
                            timeout: float | None = None) -> list[T]:
        """Take up to ``max_n`` messages (in flight for ``consumer`` until `ack`).

        Waits up to ``timeout`` (None: forever) for a first message and returns [] if none
        came; then gathers more while they keep arriving, within ``max_delay``.
        Raises:
            MailboxClosed: closed and empty.
        """
        if not self._items:
            if self._closed:
                raise MailboxClosed(self.name)
            with anyio.move_on_after(math.inf if timeout is None else timeout):
                while not self._items and not self._closed:
                    await self._park(self._recv_waiters, self._wake_receiver)
            if not self._items:
                if self._closed:
                    raise MailboxClosed(self.name)
                return []
        else:
            await anyio.lowlevel.checkpoint()
        if max_delay > 0:
            deadline = anyio.current_time() + max_delay
            while len(self._items) < max_n and anyio.current_time() < deadline:
                before = len(self._items)
                await anyio.lowlevel.checkpoint()
                if len(self._items) == before:
                    break
        return self._take(consumer, max_n)

    def _take(self, consumer: str, max_n: int) -> list[T]:
        items = self._items
        n = min(max_n, len(items))
        taken = [items.popleft() for _ in range(n)]
        self._inflight.setdefault(consumer, deque()).extend(taken)
        for _ in range(n):
            if not self._send_waiters:
                break
            self._wake_sender()
        if items:
            self._wake_receiver()
        return taken

    # --- in flight -------------------------------------------------------------------

    def ack(self, consumer: str, n: int | None = None) -> None:
        """Forget the oldest ``n`` (default: all) messages in flight for ``consumer``."""
        flight = self._inflight.get(consumer)
        if not flight:
            return
        if n is None or n >= len(flight):
            flight.clear()
        else:
            for _ in range(n):
                flight.popleft()

    def ack_item(self, consumer: str, item: T) -> None:
        """Forget one particular in-flight message (consumers that finish out of order)."""
        flight = self._inflight.get(consumer)
        if flight:
            for i, held in enumerate(flight):
                if held is item:
                    del flight[i]
                    return

    def redeliver(self, consumer: str) -> int:
        """Put ``consumer``'s in-flight messages back at the front, in order. Returns how many.

        Called by the supervisor before it starts the consumer's next incarnation.
        """
        flight = self._inflight.pop(consumer, None)
        if not flight:
            return 0
        self._items.extendleft(reversed(flight))
        self._wake_receiver()
        return len(flight)

    def clear(self) -> list[T]:
        """Remove and return every in-flight and queued message (the owner's last word)."""
        held = self.pending()
        self._inflight.clear()
        self._items.clear()
        while self._send_waiters:
            self._wake_sender()
        return held

    def redeliver_all(self) -> int:
        """`redeliver` for every consumer (their owner restarts them all together)."""
        return sum(self.redeliver(c) for c in list(self._inflight))

    def in_flight(self, consumer: str | None = None) -> int:
        if consumer is not None:
            return len(self._inflight.get(consumer, ()))
        return sum(len(f) for f in self._inflight.values())

    def __len__(self) -> int:
        return len(self._items)

    def pending(self) -> list[T]:
        """Queued and in-flight messages (for tests and diagnostics), without taking them."""
        held = [m for f in self._inflight.values() for m in f]
        return held + list(self._items)

    # --- closing ---------------------------------------------------------------------

    def close(self) -> None:
        """No more sends; receivers drain what is queued and then see `MailboxClosed`."""
        self._closed = True
        for waiters in (self._recv_waiters, self._send_waiters):
            while waiters:
                waiters.popleft().set()

    @property
    def closed(self) -> bool:
        return self._closed

    def statistics(self) -> MailboxStatistics:
        return MailboxStatistics(
            name=self.name, capacity=self.capacity, queued=len(self._items),
            in_flight=self.in_flight(), waiting_senders=len(self._send_waiters),
            waiting_receivers=len(self._recv_waiters), closed=self._closed,
        )

    # --- waking ----------------------------------------------------------------------

    async def _park(self, waiters: deque[asyncio.Event], pass_on: object) -> None:
        event = asyncio.Event()
        waiters.append(event)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():
                pass_on()  # type: ignore[operator]
            else:
                waiters.remove(event)
            raise

    def _wake_receiver(self) -> None:
        while self._recv_waiters:
            event = self._recv_waiters.popleft()
            if not event.is_set():
                event.set()
                return

    def _wake_sender(self) -> None:
        while self._send_waiters:
            event = self._send_waiters.popleft()
            if not event.is_set():
                event.set()
                return
