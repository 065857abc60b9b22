"""Redis intake: a stream read through a consumer group, acknowledged only after commit.

Entry format (what `enqueue` writes; one entry is one job)::

    identity   a JSON object of str/int fields (required): names the job (its key)
    payload    a JSON object (optional): handed to the handler, not part of the key

No other fields. An entry that breaks the format (no identity, not UTF-8, bad JSON, a
value of the wrong type, an identity `syncward.jobs` refuses, an unknown field) is
written with its reason to the dead-letter stream (``<stream>:dead`` by default) and
acknowledged in the same MULTI, so only after that write; it is never dropped silently.

How one runtime consumes (`RedisStreamSource`, one consumer of one group):

* Its consumer name is ``syncward-<n>``, n from an atomic INCR of ``<stream>:<group>:seq``
  the first time its store joins the group, kept in the store's meta: never derived
  from a listing. A runtime restarted on the same store is the same consumer.
* On every (re)start and reconnect it first re-reads its own pending entries from ID 0
  (re-submits are no-ops: job keys), then reads new ones (``>``).
* COUNT is bounded by `SourcePort.room` and by ``max_outstanding``: entries submitted or
  committed but not yet acknowledged age in the pending list too.
* Every ``claim_every`` seconds it XAUTOCLAIMs entries idle longer than ``claim_idle``
  (those of a consumer that died) and processes them as its own.
* A batch is one `Submit`; its ``on_commit`` hands the ids to the acker task, which
  XACKs them (and XDELs them, with ``delete_acked``, in the same MULTI). Nothing else
  acknowledges an entry, and the intake is never trimmed by length.

Faults. Connection errors and time-outs (and Redis loading its data after a restart)
are retried with capped exponential back-off and jitter; meanwhile ``status()`` says
``connected: false`` and since when, the runtime runs on and nothing is acknowledged.
After every reconnect the source checks Redis's ``run_id`` (a restart), whether its
group still exists (NOGROUP: recreated from ID 0, the start of what remains) and
whether the stream went backwards (restarted from an older snapshot). Each loss is a
*gap*: logged, listed in ``status()["gaps"]`` and recorded in the store's event log.

Design notes. The loop itself (reader, acker, drain, back-off, naming) is shared with
the list source in `syncward.adapters._redis_base`. Rejected: MAXLEN/XTRIM (they remove
entries still pending: the incident again); deleting before the ack; naming consumers
by host or pid (two runtimes on a host, or a reused pid, would share a pending list).
XX: a claim moves an entry between consumers, and with one store per consumer also
between stores: an entry committed by a consumer that died before its XACK is recorded
again by the claimer (see the README's "Redis intake").
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from syncward.adapters._redis_base import (
    Decoded,
    GroupLost,
    Item,
    Malformed,
    RedisConsumer,
    RedisSource,
    ResponseError,
    Token,
    decode_fields,
    endpoint,
    flag_param,
    is_nogroup,
    number_param,
    parse_fields,
    parse_item,
    redact,
    split_source_url,
)
from syncward.errors import ConfigError, InvalidJob
from syncward.jobs import JobSpec, canonical_identity

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    import redis.asyncio as aioredis

    from syncward.adapters.base import SourcePort

__all__ = [
    "Malformed",
    "RedisStreamSource",
    "StreamConfig",
    "enqueue",
    "parse_fields",
    "parse_item",
]

log = logging.getLogger("syncward.redis")

_ENQUEUE_CHUNK = 1000


# --- the producer side -------------------------------------------------------------------


def _encode(spec: JobSpec | Mapping[str, Any]) -> dict[str, str]:
    if not isinstance(spec, JobSpec):
        spec = JobSpec(identity=spec)
    for name in ("max_attempts", "lease_seconds", "timeout"):
        if getattr(spec, name) is not None:
            raise InvalidJob("cannot travel through Redis: set it on the consuming runtime",
                             field=name)
    fields = {"identity": canonical_identity(spec.identity)}
    if spec.payload:
        try:
            fields["payload"] = json.dumps(dict(spec.payload), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidJob(f"payload is not JSON-serialisable: {exc}",
                             field="payload") from None
    return fields


async def enqueue(redis: aioredis.Redis, stream: str,
                  specs: Iterable[JobSpec | Mapping[str, Any]]) -> list[str]:
    """Append one entry per spec to ``stream``, in the format the stream source reads.

    A plain mapping is taken as an identity. Every spec is checked before anything is
    sent, so a bad one sends nothing. Entries are added in order, pipelined a thousand
    at a time, never with MAXLEN. Returns the new entries' ids.
    Raises:
        InvalidJob: an identity `canonical_identity` refuses, a payload that is not a
            JSON object, or a per-job override (``max_attempts``, ...) the format lacks.
        redis.exceptions.RedisError: Redis refused or could not be reached.
    """
    encoded = [_encode(spec) for spec in specs]
    ids: list[str] = []
    for start in range(0, len(encoded), _ENQUEUE_CHUNK):
        pipe = redis.pipeline(transaction=False)
        for fields in encoded[start:start + _ENQUEUE_CHUNK]:
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        ids.extend(i.decode() if isinstance(i, bytes) else str(i) for i in await pipe.execute())
    return ids


# --- the stream source -------------------------------------------------------------------


_STREAM_PARAMS = ("stream", "group", "dead", "idle", "claim_every", "batch", "block",
                  "max_outstanding", "delete_acked")


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamConfig:
    """Where and how a `RedisStreamSource` reads.

    ``claim_idle``: seconds an entry may stay pending on a consumer before another claims
    it (set it well above the time a batch takes to commit). ``claim_every`` defaults to
    half of it. ``batch`` is the most entries read at once, ``block`` how long one read
    waits, ``max_outstanding`` (default 4 batches) the most entries read but not yet
    acknowledged. ``delete_acked`` XDELs each entry together with its XACK.
    """

    url: str = "redis://127.0.0.1:6379/0"
    stream: str
    group: str = "syncward"
    dead_letter: str | None = None
    claim_idle: float = 60.0
    claim_every: float | None = None
    batch: int = 500
    block: float = 1.0
    max_outstanding: int | None = None
    delete_acked: bool = False
    retry_initial: float = 0.1
    retry_max: float = 5.0

    def __post_init__(self) -> None:
        split_source_url(self.url, ())
        if not self.stream or not self.group:
            raise ConfigError("a Redis stream source needs a stream and a group name")
        if self.claim_idle <= 0 or self.block <= 0 or self.batch < 1:
            raise ConfigError("claim_idle and block must be > 0 and batch >= 1")
        if self.max_outstanding is not None and self.max_outstanding < self.batch:
            raise ConfigError("max_outstanding must be at least batch")

    @property
    def dead_letter_stream(self) -> str:
        return self.dead_letter or f"{self.stream}:dead"

    @property
    def claim_period(self) -> float:
        return self.claim_every if self.claim_every is not None else self.claim_idle / 2

    @classmethod
    def from_url(cls, url: str) -> StreamConfig:
        """``redis://HOST:PORT/DB?stream=NAME&group=G`` plus optional ``dead``, ``idle``
        (claim_idle), ``claim_every``, ``batch``, ``block``, ``max_outstanding``,
        ``delete_acked``.

        Raises:
            ConfigError: not a Redis URL, no stream, an unknown or malformed parameter.
        """
        base, p = split_source_url(url, _STREAM_PARAMS)
        if not p.get("stream"):
            raise ConfigError(f"{redact(url)}: give the stream: ?stream=NAME&group=G")
        opts: dict[str, Any] = {"url": base, "stream": p["stream"]}
        for key, attr in (("group", "group"), ("dead", "dead_letter")):
            if key in p:
                opts[attr] = p[key]
        for key, attr, kind in (("idle", "claim_idle", float), ("claim_every", "claim_every",
                                 float), ("batch", "batch", int), ("block", "block", float),
                                ("max_outstanding", "max_outstanding", int)):
            if key in p:
                opts[attr] = number_param(p, key, kind)
        if "delete_acked" in p:
            opts["delete_acked"] = flag_param(p["delete_acked"], "delete_acked")
        return cls(**opts)


class RedisStreamSource(RedisSource):
    """A `Source` reading a Redis stream through a consumer group. See the module docs."""

    kind = "redis-stream"
    config: StreamConfig

    def __init__(self, config: StreamConfig, *, name: str = "redis-stream") -> None:
        super().__init__(config, name=name,
                         target={"stream": config.stream, "group": config.group})

    def _make(self, runtime: SourcePort) -> _StreamConsumer:
        return _StreamConsumer(self, runtime)


class _StreamConsumer(RedisConsumer):
    def __init__(self, source: RedisStreamSource, runtime: SourcePort) -> None:
        super().__init__(**source.consumer_args(runtime))
        self.cfg = source.config
        self.cursor: Token = b"0"
        self._claim_cursor: bytes | str = b"0-0"
        self._next_claim = 0.0

    @property
    def consumer(self) -> str:
        assert self.state.consumer is not None
        return self.state.consumer

    async def _prepare(self) -> None:
        cfg, state = self.cfg, self.state
        restarted = await self._check_server()
        meta_key = f"redis.stream.consumer:{endpoint(cfg.url)}/{cfg.stream}/{cfg.group}"
        known = state.seen_before or await self.runtime.get_meta(meta_key) is not None
        if await self._create_group():
            if known:
                await self._gap(
                    f"consumer group {cfg.group!r} of stream {cfg.stream!r} was gone "
                    "(Redis lost it: a restart without persistence, eviction, or a delete); "
                    "recreated from the start of what remains: entries added before the "
                    "loss and not yet processed may be lost, processed ones may run again")
        elif restarted:
            await self._check_rollback()
        state.seen_before = True
        await self._join(meta_key, f"{cfg.stream}:{cfg.group}:seq")
        self.cursor = b"0"  # own pending entries first, after every (re)connect

    async def _create_group(self) -> bool:
        try:
            await self.redis.xgroup_create(self.cfg.stream, self.cfg.group, id="0",
                                           mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise
        return True

    async def _check_rollback(self) -> None:
        """After a restart: did the stream go back behind an id we have read?"""
        if self.state.last_id is None:
            return
        info = await self.redis.xinfo_stream(self.cfg.stream)
        last = _id_tuple(info.get("last-generated-id", b"0-0"))
        if last < self.state.last_id:
            await self._gap(
                f"stream {self.cfg.stream!r} restarted from an older copy (its last id "
                f"{last[0]}-{last[1]} is before {self.state.last_id[0]}-{self.state.last_id[1]}, "
                "already read): entries added after that copy was saved are lost")

    async def _read(self, n: int) -> list[Item]:
        try:
            return await self._read_some(n)
        except ResponseError as exc:
            if is_nogroup(exc):
                raise GroupLost from exc
            raise

    async def _read_some(self, n: int) -> list[Item]:
        cfg, r = self.cfg, self.redis
        if self.cursor != b">":
            resp = await r.xreadgroup(cfg.group, self.consumer, {cfg.stream: self.cursor},
                                      count=n)
            items = self._items(resp)
            if items:
                self.cursor = items[-1].token
                return items
            self.cursor = b">"
        now = time.monotonic()
        if now >= self._next_claim:
            items = await self._claim(n, now)
            if items:
                return items
        resp = await r.xreadgroup(cfg.group, self.consumer, {cfg.stream: ">"}, count=n,
                                  block=max(1, int(cfg.block * 1000)))
        return self._items(resp)

    def _items(self, resp: Any) -> list[Item]:
        if not resp:
            return []
        items = [Item(entry_id, fields) for _, entries in resp for entry_id, fields in entries]
        if items:
            last = _id_tuple(items[-1].token)
            if self.state.last_id is None or last > self.state.last_id:
                self.state.last_id = last
        return items

    async def _claim(self, n: int, now: float) -> list[Item]:
        cfg = self.cfg
        resp = await self.redis.xautoclaim(
            cfg.stream, cfg.group, self.consumer, min_idle_time=int(cfg.claim_idle * 1000),
            start_id=self._claim_cursor, count=n)
        self._claim_cursor = resp[0]
        if resp[0] in (b"0-0", "0-0"):
            self._next_claim = now + cfg.claim_period
        items = [Item(entry_id, fields) for entry_id, fields in resp[1]]
        if items:
            self.state.claimed += len(items)
            log.info("%s: claimed %d entr(ies) idle longer than %gs", self.state.label,
                     len(items), cfg.claim_idle)
        return items

    def _decode(self, item: Item) -> Decoded | Malformed | None:
        return decode_fields(item.data)

    async def _acknowledge(self, tokens: Sequence[Token]) -> None:
        cfg = self.cfg
        if not cfg.delete_acked:
            await self.redis.xack(cfg.stream, cfg.group, *tokens)
            return
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(cfg.stream, cfg.group, *tokens)
        pipe.xdel(cfg.stream, *tokens)
        await pipe.execute()

    async def _dead_letter(self, bad: Sequence[tuple[Item, str]]) -> None:
        cfg = self.cfg
        pipe = self.redis.pipeline(transaction=True)
        for item, reason in bad:
            fields: dict[Any, Any] = {"error": reason, "stream": cfg.stream, "id": item.token,
                                      "group": cfg.group, "consumer": self.consumer}
            for name, value in (item.data or {}).items():
                fields[b"entry." + (name if isinstance(name, bytes) else name.encode())] = value
            pipe.xadd(cfg.dead_letter_stream, fields)
        pipe.xack(cfg.stream, cfg.group, *(item.token for item, _ in bad))
        try:
            await pipe.execute()
        except ResponseError as exc:
            if is_nogroup(exc):
                raise GroupLost from exc
            raise

    async def _when_empty(self) -> None:
        if self._idle():
            try:
                summary = await self.redis.xpending(self.cfg.stream, self.cfg.group)
            except ResponseError as exc:
                if is_nogroup(exc):
                    raise GroupLost from exc
                raise
            self.state.pending = int(summary["pending"])
            self.state.drained = self.state.pending == 0 and self._idle()


def _id_tuple(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
