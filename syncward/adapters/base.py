"""What adapters see of the runtime: the source port and the reconcile-hook signature.

A source (a Redis stream, a Redis list, ...) is given a `SourcePort`, not the runtime:
it can send messages to the syncer, ask how much room the syncer's mailbox has, read the
store's metadata and the runtime's clock, and nothing else. The store protocols
themselves live in `syncward.store`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from syncward.clock import Clock
    from syncward.messages import SyncerMsg
    from syncward.store.base import StoreReader
    from syncward.supervisor import Actor

__all__ = ["ReconcileHook", "Source", "SourcePort"]


class SourcePort(Protocol):
    """The part of a running runtime a source uses."""

    @property
    def max_attempts(self) -> int:
        """The runtime's default attempts per job (a source's jobs get it)."""
        ...

    @property
    def clock(self) -> Clock: ...

    def limit_key(self, identity: dict[str, Any], payload: dict[str, Any]) -> str | None:
        """The limit key (`syncward.Limit`) of a job the source creates, if any.

        Raises:
            ConfigError: a limit's key function failed on it.
        """
        ...

    async def send(self, msg: SyncerMsg) -> None:
        """Deliver a message to the syncer, waiting while its mailbox is full.

        Raises:
            MailboxClosed: the runtime is stopping.
        """
        ...

    def room(self) -> int:
        """How many more messages the syncer's mailbox takes now without waiting."""
        ...

    async def get_meta(self, key: str) -> str | None:
        """One key of the store's metadata (written through `SetMeta`)."""
        ...


class Source(Protocol):
    """Where work comes from besides `Runtime.submit`: a Redis stream, a Redis list, ...

    The runtime runs each source as an actor, a child of its root supervisor started
    after the downloader pool (so it is stopped first). ``actor(port)`` makes a fresh
    incarnation on every (re)start. A source submits through ``port.send(Submit(...,
    on_commit=...))`` and acknowledges upstream only from ``on_commit``, i.e. after the
    commit; it takes no more than ``port.room()`` entries into local buffers at once.
    """

    name: str

    def actor(self, port: SourcePort) -> Actor: ...

    def status(self) -> dict[str, Any]:
        """JSON-serialisable state for `Runtime.status` (connected, lag, gaps, ...)."""
        ...


class ReconcileHook(Protocol):
    """An adapter's start-up clean-up (e.g. partial files with no leased job).

    Called after the store's own reconciliation, before any actor starts; returns a small
    JSON-serialisable summary of what it did, kept in the reconciliation report.
    """

    async def __call__(self, store: StoreReader, *, dry_run: bool) -> dict[str, Any]: ...
