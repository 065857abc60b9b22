"""A lossless drain for an existing Redis list: the corrected "read 100, write, trim 100".

For producers that already ``RPUSH`` items to a list (the incident's set-up). An item is
a JSON object ``{"identity": {...}, "payload": {...}}`` (payload optional), as a line of
a ``.jsonl`` manifest. Keys, for a list ``L`` and this store's consumer ``C``::

    L                     the producers' list (items are taken from its head)
    L:processing:C        C's processing list: items taken and not yet recorded
    L:alive:C             C's heartbeat (expires after ``idle`` seconds)
    L:consumers           the consumers that hold processing lists (for the reclaim)
    L:seq                 the counter consumer numbers come from (INCR, never a listing)
    L:dead                malformed items with their reason (JSON objects)

How one runtime consumes (`RedisListSource`):

* Items move from ``L`` to ``L:processing:C`` atomically (LMOVE in a script for a batch,
  BLMOVE to wait for the next one), are submitted, and are removed from the processing
  list (``LREM C 1 item``) only after the commit that recorded them. A crash at any
  point leaves every item in ``L`` or in ``L:processing:C``.
* At start-up, and after each reconnect, the runtime first submits what its own
  processing list holds (re-submits are no-ops: job keys).
* A heartbeat key is refreshed every ``idle / 3`` seconds; every ``idle / 2`` seconds the
  processing lists of consumers whose heartbeat has expired are moved back to the head
  of ``L`` (atomically, in order), so another consumer finishes them.
* Malformed items are pushed to ``L:dead`` with their reason and removed from the
  processing list in the same MULTI.

Faults, back-off, the status and the consumer naming are those of
`syncward.adapters.redis` (its module docstring). Design notes: LREM is O(n) in the
processing list, which never holds more than ``max_outstanding`` items; equal items
(the same JSON twice) are interchangeable, since they are the same job, so ``LREM 1``
removing "the other copy" still removes a recorded one. A consumer whose heartbeat
lapsed while it was alive (a pause longer than ``idle``) may have its items processed by
another store as well: duplicates across stores, never a loss.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from syncward.adapters._redis_base import (
    FAULTS,
    Decoded,
    Item,
    Malformed,
    RedisConsumer,
    RedisSource,
    Token,
    decode_item,
    endpoint,
    number_param,
    redact,
    split_source_url,
)
from syncward.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from syncward.adapters.base import SourcePort

__all__ = ["ListConfig", "RedisListSource"]

log = logging.getLogger("syncward.redis")

_LIST_PARAMS = ("list", "dead", "idle", "batch", "block", "max_outstanding")

_TAKE = """
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local v = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not v then break end
  out[#out + 1] = v
end
return out
"""

# KEYS: a consumer's processing list; ARGV: the items recorded (one LREM each, in one call:
# a pipeline of LREMs costs the client more than the server, per item)
_REMOVE = """
for i = 1, #ARGV do redis.call('LREM', KEYS[1], 1, ARGV[i]) end
return 0
"""

# KEYS: source list, a consumer's processing list, its heartbeat, the registry; ARGV: name
_RECLAIM = """
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local n = 0
while redis.call('LMOVE', KEYS[2], KEYS[1], 'RIGHT', 'LEFT') do n = n + 1 end
redis.call('SREM', KEYS[4], ARGV[1])
return n
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class ListConfig:
    """Where and how a `RedisListSource` reads.

    ``idle``: seconds after which a consumer without a heartbeat is gone and its
    processing list goes back to the list. ``batch`` is the most items taken at once,
    ``block`` how long one wait for an item lasts, ``max_outstanding`` (default 4
    batches) the most items taken but not yet removed.
    """

    url: str = "redis://127.0.0.1:6379/0"
    list: str
    dead_letter: str | None = None
    idle: float = 60.0
    batch: int = 500
    block: float = 1.0
    max_outstanding: int | None = None
    retry_initial: float = 0.1
    retry_max: float = 5.0

    def __post_init__(self) -> None:
        split_source_url(self.url, ())
        if not self.list:
            raise ConfigError("a Redis list source needs a list name")
        if self.idle <= 0 or self.block <= 0 or self.batch < 1:
            raise ConfigError("idle and block must be > 0 and batch >= 1")
        if self.max_outstanding is not None and self.max_outstanding < self.batch:
            raise ConfigError("max_outstanding must be at least batch")

    @property
    def dead_letter_list(self) -> str:
        return self.dead_letter or f"{self.list}:dead"

    def processing(self, consumer: str) -> str:
        return f"{self.list}:processing:{consumer}"

    def alive(self, consumer: str) -> str:
        return f"{self.list}:alive:{consumer}"

    @property
    def registry(self) -> str:
        return f"{self.list}:consumers"

    @classmethod
    def from_url(cls, url: str) -> ListConfig:
        """``redis://HOST:PORT/DB?list=NAME`` plus optional ``dead``, ``idle``, ``batch``,
        ``block``, ``max_outstanding``.

        Raises:
            ConfigError: not a Redis URL, no list, an unknown or malformed parameter.
        """
        base, p = split_source_url(url, _LIST_PARAMS)
        if not p.get("list"):
            raise ConfigError(f"{redact(url)}: give the list: ?list=NAME")
        opts: dict[str, Any] = {"url": base, "list": p["list"]}
        if "dead" in p:
            opts["dead_letter"] = p["dead"]
        for key, kind in (("idle", float), ("batch", int), ("block", float),
                          ("max_outstanding", int)):
            if key in p:
                opts[key] = number_param(p, key, kind)
        return cls(**opts)


class RedisListSource(RedisSource):
    """A `Source` draining a Redis list without losing an item. See the module docs."""

    kind = "redis-list"
    config: ListConfig

    def __init__(self, config: ListConfig, *, name: str = "redis-list") -> None:
        super().__init__(config, name=name, target={"list": config.list})

    def _make(self, runtime: SourcePort) -> _ListConsumer:
        return _ListConsumer(self, runtime)


class _ListConsumer(RedisConsumer):
    def __init__(self, source: RedisListSource, runtime: SourcePort) -> None:
        super().__init__(**source.consumer_args(runtime))
        self.cfg = source.config
        self._own_first = True
        self._next_reclaim = 0.0
        self._take = self.redis.register_script(_TAKE)
        self._remove = self.redis.register_script(_REMOVE)
        self._reclaim = self.redis.register_script(_RECLAIM)
        self.state.extra.setdefault("reclaimed", 0)

    @property
    def consumer(self) -> str:
        assert self.state.consumer is not None
        return self.state.consumer

    @property
    def processing(self) -> str:
        return self.cfg.processing(self.consumer)

    def _start_helpers(self, tg: anyio.abc.TaskGroup) -> None:
        tg.start_soon(self._heartbeat_loop)

    async def _heartbeat_loop(self) -> None:
        while True:
            if self.state.consumer is not None:
                try:
                    await self._beat()
                except FAULTS as exc:
                    self.state.down(exc)
            await anyio.sleep(self.cfg.idle / 3)

    async def _beat(self) -> None:
        """Refresh the heartbeat, and the registry entry a reclaim may have removed."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.sadd(self.cfg.registry, self.consumer)
        pipe.set(self.cfg.alive(self.consumer), "1", px=max(1, int(self.cfg.idle * 1000)))
        await pipe.execute()

    async def _prepare(self) -> None:
        cfg = self.cfg
        restarted = await self._check_server()
        meta_key = f"redis.list.consumer:{endpoint(cfg.url)}/{cfg.list}"
        await self._join(meta_key, f"{cfg.list}:seq")
        added = await self.redis.sadd(cfg.registry, self.consumer)
        await self._beat()
        if restarted and added:
            await self._gap(
                f"Redis restarted and had lost the consumers of list {cfg.list!r} (a restart "
                "without persistence?): items it held, in the list or in processing lists, "
                "may be lost")
        self._own_first = True

    async def _read(self, n: int) -> list[Item]:
        r, cfg = self.redis, self.cfg
        if self._own_first:
            self._own_first = False
            own = await r.lrange(self.processing, 0, -1)
            if own:
                log.info("%s: finishing %d item(s) of %s first", self.state.label,
                         len(own), self.processing)
                return [Item(raw, raw) for raw in own]
        now = time.monotonic()
        if now >= self._next_reclaim:
            self._next_reclaim = now + cfg.idle / 2
            await self._reclaim_gone()
        taken = await self._take(keys=[cfg.list, self.processing], args=[n])
        if not taken:
            one = await r.blmove(cfg.list, self.processing, cfg.block,  # type: ignore[arg-type]
                                 "LEFT", "RIGHT")
            taken = [] if one is None else [one]
        return [Item(raw, raw) for raw in taken]

    async def _reclaim_gone(self) -> None:
        cfg = self.cfg
        for member in await self.redis.smembers(cfg.registry):
            name = member.decode() if isinstance(member, bytes) else str(member)
            if name == self.consumer:
                continue
            moved = await self._reclaim(
                keys=[cfg.list, cfg.processing(name), cfg.alive(name), cfg.registry],
                args=[name])
            if moved and int(moved) > 0:
                self.state.extra["reclaimed"] += int(moved)
                log.warning("%s: consumer %s is gone (no heartbeat for %gs): %d item(s) "
                            "of its processing list moved back", self.state.label, name,
                            cfg.idle, moved)

    def _decode(self, item: Item) -> Decoded | Malformed | None:
        return decode_item(item.data)

    async def _acknowledge(self, tokens: Sequence[Token]) -> None:
        await self._remove(keys=[self.processing], args=list(tokens))

    async def _dead_letter(self, bad: Sequence[tuple[Item, str]]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        for item, reason in bad:
            raw = item.data
            text = raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else raw
            pipe.rpush(self.cfg.dead_letter_list, json.dumps(
                {"item": text, "error": reason, "list": self.cfg.list,
                 "consumer": self.consumer, "at": time.time()}))
            pipe.execute_command("LREM", self.processing, 1, raw)
        await pipe.execute()

    async def _when_empty(self) -> None:
        if not self._idle():
            return
        cfg = self.cfg
        others = [m.decode() if isinstance(m, bytes) else str(m)
                  for m in await self.redis.smembers(cfg.registry)]
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(cfg.list)
        pipe.llen(self.processing)
        for name in others:
            pipe.llen(cfg.processing(name))
        lengths = await pipe.execute()
        self.state.pending = sum(int(n) for n in lengths[1:])
        self.state.drained = not any(lengths) and self._idle()
