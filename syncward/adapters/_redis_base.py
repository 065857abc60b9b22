"""What the Redis sources share: the item format, the link to Redis, the consumer skeleton.

`syncward.adapters.redis` (streams) and `syncward.adapters.redis_list` (lists) are two
shapes of one loop, written once here as `RedisConsumer`: a reader task that takes at
most as many items as the runtime has room for and submits each batch as one `Submit`,
an acker task that acknowledges upstream what ``on_commit`` reported committed, and a
short drain on stop. `IntakeState` is what a source keeps across incarnations of its
actor (counters, the link's health, gaps, and the committed-but-unacknowledged tokens,
which the next incarnation acknowledges), and is what ``Source.status()`` shows.

Design notes. Connection faults (`FAULTS`) are the only errors retried here, with capped
exponential back-off and jitter; any other error is a crash for the supervisor. redis-py's
own retries are switched off (``Retry(NoBackoff(), 0)``) so that every fault is seen,
shown as ``connected: false``, and followed by the subclass's `_prepare` checks. A consumer
name comes from an atomic INCR and is kept in the store's meta (`SetMeta`), never from a
listing of who is there. Importing this module without redis-py raises
`MissingDependency("redis")`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeAlias, TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import anyio

from syncward.errors import ConfigError, InvalidJob, MailboxClosed, MissingDependency
from syncward.jobs import JobSpec, keyed_identity
from syncward.messages import NewJob, RecordEvent, Reply, SetMeta, Submit, SubmitResult
from syncward.store.urls import redact

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:
    raise MissingDependency("redis") from exc

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

    from syncward.adapters.base import SourcePort

__all__ = [
    "Decoded",
    "FAULTS",
    "GroupLost",
    "IntakeState",
    "Item",
    "Malformed",
    "RedisConsumer",
    "ResponseError",
    "Stopping",
    "Token",
    "connect",
    "decode_fields",
    "decode_item",
    "endpoint",
    "flag_param",
    "is_nogroup",
    "new_job",
    "number_param",
    "parse_fields",
    "parse_item",
    "redact",
    "split_source_url",
]

log = logging.getLogger("syncward.redis")

T = TypeVar("T")

#: What is retried with back-off: the connection, never the data.
FAULTS: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError)

#: What acknowledges an item: a stream entry's id, or a list item itself.
Token: TypeAlias = bytes | str

_FIELDS = frozenset({"identity", "payload"})
_ACK_CHUNK = 1000
_DRAIN_MAX = 3.0
_DRAIN_STALL = 0.25
_KEEP_AHEAD = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 0
"""


# --- the entry format --------------------------------------------------------------------


class Malformed(NamedTuple):
    """An entry or list item that cannot become a job, and why."""

    reason: str


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)


class Decoded(NamedTuple):
    """An item whose JSON is well-formed; its identity is not checked yet."""

    identity: dict[str, Any]
    payload: dict[str, Any]
    payload_text: str  # the payload as given (JSON text), "{}" when absent


def _loads(text: str) -> Any:
    """``_DECODER.decode(text)``, sooner for the usual text: one JSON value with nothing
    around it, which `raw_decode` reads without `decode`'s two whitespace passes.

    Raises:
        ValueError: as `decode` (which reads any other text: the same value or error).
    """
    try:
        value, end = _DECODER.raw_decode(text)
    except ValueError:
        end = -1
    if end != len(text):
        return _DECODER.decode(text)
    return value


def _json_object(raw: bytes | str, what: str) -> tuple[dict[str, Any], str] | Malformed:
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        return Malformed(f"{what} is not valid UTF-8 (byte {exc.start})")
    try:
        value = _loads(text)
    except ValueError as exc:
        return Malformed(f"{what} is not valid JSON: {exc}")
    except RecursionError:  # one entry must not stop the source (it would be read again)
        return Malformed(f"{what} is nested too deeply to decode")
    if not isinstance(value, dict):
        return Malformed(f"{what} must be a JSON object, got {type(value).__name__}")
    return value, text


#: A stream entry's field names as redis-py gives them (bytes, or str when decoding).
_FIELD_NAMES: dict[bytes | str, str] = {b"identity": "identity", "identity": "identity",
                                        b"payload": "payload", "payload": "payload"}


def _unknown(names: Iterable[str]) -> Malformed:
    """Why an entry with a field besides 'identity' and 'payload' is refused."""
    unknown = sorted(set(names) - _FIELDS)
    return Malformed(f"unknown field(s) {', '.join(map(repr, unknown))}: expected "
                     "'identity' and optional 'payload'")


def _field_name(name: bytes | str) -> str:
    return name.decode("utf-8", "backslashreplace") if isinstance(name, bytes) else name


def decode_fields(fields: Mapping[bytes, bytes] | Mapping[str, str] | None
                  ) -> Decoded | Malformed | None:
    """A stream entry's fields, decoded; None for an entry deleted while pending."""
    if not fields:
        return None
    names: dict[str, bytes | str] = {}
    for name, value in fields.items():
        known = _FIELD_NAMES.get(name)
        if known is None:
            return _unknown(map(_field_name, fields))
        names[known] = value
    if "identity" not in names:
        return Malformed("no 'identity' field")
    identity = _json_object(names["identity"], "identity")
    if isinstance(identity, Malformed):
        return identity
    if "payload" not in names:
        return Decoded(identity[0], {}, "{}")
    payload = _json_object(names["payload"], "payload")
    if isinstance(payload, Malformed):
        return payload
    return Decoded(identity[0], payload[0], payload[1])


def decode_item(raw: bytes | str) -> Decoded | Malformed:
    """A list item, ``{"identity": {...}, "payload": {...}}`` (payload optional), decoded."""
    obj = _json_object(raw, "item")
    if isinstance(obj, Malformed):
        return obj
    fields = obj[0]
    if not fields.keys() <= _FIELDS:
        return _unknown(fields)
    if "identity" not in fields:
        return Malformed("no 'identity' field")
    identity, payload = fields["identity"], fields.get("payload", {})
    if not isinstance(identity, dict):
        return Malformed(f"identity must be a JSON object, got {type(identity).__name__}")
    if not isinstance(payload, dict):
        return Malformed(f"payload must be a JSON object, got {type(payload).__name__}")
    # The payload is stored as JSON text: this item's text holds it, but not as a slice
    # json gives back, so it is encoded again (one C call; only when there is one).
    return Decoded(identity, payload, json.dumps(payload) if payload else "{}")


def new_job(decoded: Decoded, max_attempts: int) -> NewJob | Malformed:
    """The job a decoded item asks for, or why the identity cannot name one."""
    try:
        key, canonical = keyed_identity(decoded.identity)
    except InvalidJob as exc:
        return Malformed(str(exc))
    return NewJob(key=key, identity=canonical, payload=decoded.payload_text,
                  max_attempts=max_attempts)


def _spec(decoded: Decoded | Malformed | None) -> JobSpec | Malformed | None:
    if decoded is None or isinstance(decoded, Malformed):
        return decoded
    job = new_job(decoded, 1)
    if isinstance(job, Malformed):
        return job
    return JobSpec(identity=decoded.identity, payload=decoded.payload)


def parse_fields(fields: Mapping[bytes, bytes] | Mapping[str, str] | None
                 ) -> JobSpec | Malformed | None:
    """A stream entry's fields as a job spec, or why not; None for a deleted entry."""
    return _spec(decode_fields(fields))


def parse_item(raw: bytes | str) -> JobSpec | Malformed:
    """A list item as a job spec, or why not."""
    spec = _spec(decode_item(raw))
    assert spec is not None
    return spec


# --- connecting --------------------------------------------------------------------------


def split_source_url(url: str, allowed: Iterable[str]) -> tuple[str, dict[str, str]]:
    """``redis://h:p/db?stream=s&...`` -> (``redis://h:p/db``, {"stream": "s", ...}).

    Raises:
        ConfigError: not a redis:// or rediss:// URL, a parameter given twice or unknown.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError(f"not a Redis URL: {redact(url)} (expected redis://HOST:PORT/DB?...)")
    params: dict[str, str] = {}
    known = set(allowed)
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in known:
            raise ConfigError(f"{redact(url)}: unknown parameter {name!r} "
                              f"(known: {', '.join(sorted(known))})")
        if name in params:
            raise ConfigError(f"{redact(url)}: parameter {name!r} given twice")
        params[name] = value
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ConfigError(f"{redact(url)}: bad port") from None
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), params


def endpoint(url: str) -> str:
    """``host:port/db`` of a Redis URL: where a consumer name is valid."""
    parts = urlsplit(url)
    db = parts.path.strip("/") or "0"
    return f"{parts.hostname}:{parts.port or 6379}/{db}"


def connect(url: str, *, read_timeout: float = 10.0) -> aioredis.Redis:
    """A client with redis-py's retries off (we retry, visibly) and bounded waits."""
    client: aioredis.Redis = aioredis.Redis.from_url(
        url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=5.0,
        socket_timeout=read_timeout)
    return client


async def _eviction_warning(redis: aioredis.Redis) -> str | None:
    """A warning when Redis may evict keys that have no expiry (ours), else None."""
    try:
        conf = await redis.config_get("maxmemory-policy")
    except ResponseError:
        return None  # CONFIG is disabled (managed Redis): cannot tell
    policy = next(iter(conf.values()), None)
    policy = policy.decode() if isinstance(policy, bytes) else policy
    if policy and policy.startswith("allkeys"):
        return (f"Redis maxmemory-policy is {policy}: under memory pressure it may evict the "
                "intake and its consumer groups, losing entries; use noeviction "
                "(or a volatile-* policy)")
    return None


def is_nogroup(exc: ResponseError) -> bool:
    return str(exc).startswith("NOGROUP")


class Stopping(Exception):
    """The actor was asked to stop while it waited on the runtime."""


class GroupLost(Exception):
    """NOGROUP: the stream or the group is gone; prepare again (and record the gap)."""


@dataclass
class _Backoff:
    initial: float
    cap: float
    current: float = 0.0

    def next(self) -> float:
        self.current = min(self.cap, self.current * 2) if self.current else self.initial
        return random.uniform(self.current / 2, self.current)

    def reset(self) -> None:
        self.current = 0.0


# --- state that outlives an incarnation --------------------------------------------------


@dataclass
class IntakeState:
    """What a Redis source knows across restarts of its actor; `status` shows it."""

    kind: str
    target: dict[str, Any]
    consumer: str | None = None
    connected: bool = False
    error: str | None = None
    down_since: float | None = None
    faults: int = 0
    run_id: str | None = None
    redis_restarts: int = 0
    read: int = 0
    submitted: int = 0
    committed: int = 0
    acked: int = 0
    dead_lettered: int = 0
    claimed: int = 0
    vanished: int = 0
    pending: int | None = None
    drained: bool = False
    seen_before: bool = False
    last_id: tuple[int, int] | None = None  # the highest stream id read (streams only)
    memory_checked: bool = False
    acks: list[Token] = field(default_factory=list)  # committed, not yet acknowledged
    gaps: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``redis-stream in (group g) at redis://host:6379/0``, for the log."""
        t = self.target
        what = t.get("stream") or t.get("list")
        group = f" (group {t['group']})" if "group" in t else ""
        return f"{self.kind} {what}{group} at {t['redis']}"

    def up(self) -> None:
        self.connected, self.error, self.down_since = True, None, None

    def down(self, exc: BaseException) -> None:
        if self.connected or self.down_since is None:
            self.down_since = time.time()
            log.warning("%s: connection lost: %s", self.label, exc)
        self.connected = False
        self.error = f"{type(exc).__name__}: {exc}"
        self.faults += 1

    def as_dict(self, outstanding: int) -> dict[str, Any]:
        return {
            "kind": self.kind, **self.target, "consumer": self.consumer,
            "connected": self.connected, "error": self.error,
            "disconnected_since": self.down_since, "faults": self.faults,
            "redis_run_id": self.run_id, "redis_restarts": self.redis_restarts,
            "read": self.read, "submitted": self.submitted, "committed": self.committed,
            "acked": self.acked, "outstanding": outstanding, "unacked": len(self.acks),
            "dead_lettered": self.dead_lettered, "claimed": self.claimed,
            "vanished": self.vanished, "pending": self.pending, "drained": self.drained,
            "gaps": list(self.gaps), "warnings": list(self.warnings), **self.extra,
        }


class Item(NamedTuple):
    """One entry or list item as read."""

    token: Token  # what acknowledges it: a stream id, or the list item itself
    data: Any  # the entry's fields, or the list item


# --- the consumer skeleton shared by the stream and list sources -------------------------


class SourceConfig(Protocol):
    """What every Redis source's configuration gives its consumer."""

    @property
    def url(self) -> str: ...
    @property
    def batch(self) -> int: ...
    @property
    def block(self) -> float: ...
    @property
    def max_outstanding(self) -> int | None: ...
    @property
    def retry_initial(self) -> float: ...
    @property
    def retry_max(self) -> float: ...


class RedisSource:
    """The part of a Redis `Source` that outlives its actor's incarnations.

    Holds the configuration, the `IntakeState` every incarnation reports into, and the
    current incarnation (for ``status``). Subclasses set ``kind`` and give ``_make``.
    """

    kind = "redis"

    def __init__(self, config: SourceConfig, *, name: str, target: dict[str, str]) -> None:
        self.config = config
        self.name = name
        self._state = IntakeState(kind=self.kind, target={"redis": redact(config.url),
                                                          **target})
        self._current: RedisConsumer | None = None

    def _make(self, runtime: SourcePort) -> RedisConsumer:
        raise NotImplementedError

    def actor(self, runtime: SourcePort) -> RedisConsumer:
        self._current = self._make(runtime)
        return self._current

    def status(self) -> dict[str, Any]:
        current = self._current
        return self._state.as_dict(current.outstanding if current is not None else 0)

    def consumer_args(self, runtime: SourcePort) -> dict[str, Any]:
        """The keyword arguments of `RedisConsumer` that come from this source."""
        cfg = self.config
        return {"name": self.name, "state": self._state, "runtime": runtime, "url": cfg.url,
                "batch": cfg.batch, "block": cfg.block,
                "max_outstanding": cfg.max_outstanding or 4 * cfg.batch,
                "backoff": (cfg.retry_initial, cfg.retry_max)}


class RedisConsumer:
    """One incarnation of a Redis source's actor: reader, acker, drain on stop.

    Subclasses give `_prepare` (after each (re)connect), `_read` (up to n items),
    `_decode`, `_acknowledge` (after commit), `_dead_letter` and `_when_empty`.
    """

    def __init__(self, *, name: str, state: IntakeState, runtime: SourcePort, url: str,
                 batch: int, block: float, max_outstanding: int,
                 backoff: tuple[float, float]) -> None:
        self.name = name
        self.state = state
        self.runtime = runtime
        self.url = url
        self.batch = batch
        self.block = block
        self.max_outstanding = max_outstanding
        self.backoff = backoff
        self.redis = connect(url, read_timeout=block + 10.0)
        self.outstanding = 0  # submitted, not yet committed
        self._acking = 0
        self._stop = anyio.Event()
        self._changed = anyio.Event()
        self._waiting: anyio.CancelScope | None = None

    def request_stop(self) -> None:
        self._stop.set()
        if self._waiting is not None:
            self._waiting.cancel()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._ack_loop)
                self._start_helpers(tg)
                await self._read_loop()
                await self._drain()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.redis.aclose()

    def _start_helpers(self, tg: anyio.abc.TaskGroup) -> None:
        """Start extra tasks (the list source's heartbeat)."""

    # --- hooks -----------------------------------------------------------------------

    async def _prepare(self) -> None:
        raise NotImplementedError

    async def _read(self, n: int) -> list[Item]:
        raise NotImplementedError

    def _decode(self, item: Item) -> Decoded | Malformed | None:
        raise NotImplementedError

    async def _acknowledge(self, tokens: Sequence[Token]) -> None:
        raise NotImplementedError

    async def _dead_letter(self, bad: Sequence[tuple[Item, str]]) -> None:
        raise NotImplementedError

    async def _when_empty(self) -> None:
        raise NotImplementedError

    # --- the loops -------------------------------------------------------------------

    async def _unless_stopped(self, wait: Callable[[], Awaitable[T]]) -> T:
        """``await wait()`` (a send to the syncer, a reply), given up when asked to stop.

        Only waits on the runtime are given up this way, never a Redis command (a read
        cut short would leave entries pending until the next start).
        Raises:
            Stopping: the stop request came first.
        """
        with anyio.CancelScope() as scope:
            self._waiting = scope
            if self._stop.is_set():
                scope.cancel()
            try:
                return await wait()
            finally:
                self._waiting = None
        raise Stopping

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _wait_change(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await self._changed.wait()

    async def _pause(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self._stop.wait()

    def _capacity(self) -> int:
        held = self.outstanding + len(self.state.acks) + self._acking
        return min(self.batch, self.runtime.room(), self.max_outstanding - held)

    def _idle(self) -> bool:
        return not (self.outstanding or self.state.acks or self._acking)

    async def _read_loop(self) -> None:
        """Read, submit, repeat. After any fault (seen here, by the acker or by a helper)
        the next pass prepares again (checks, own pending first) before reading."""
        backoff = _Backoff(*self.backoff)
        prepared_at: int | None = None  # the fault count when last prepared
        while not self._stop.is_set():
            try:
                if prepared_at != self.state.faults:
                    faults = self.state.faults
                    await self._prepare()
                    prepared_at = faults
                    self.state.up()
                    backoff.reset()
                n = self._capacity()
                if n <= 0:
                    await self._wait_change(0.05)
                    continue
                items = await self._read(n)
                self.state.up()
                if items:
                    self.state.drained = False
                    await self._process(items)
                else:
                    await self._when_empty()
            except FAULTS as exc:
                self.state.down(exc)
                await self._pause(backoff.next())
            except GroupLost:
                prepared_at = None
            except (MailboxClosed, Stopping):
                return

    def _job(self, decoded: Decoded, max_attempts: int) -> NewJob | Malformed:
        """The job of a decoded item, with its limit key when the runtime declares limits."""
        job = new_job(decoded, max_attempts)
        if isinstance(job, Malformed):
            return job
        try:
            limit_key = self.runtime.limit_key(decoded.identity, decoded.payload)
        except (ConfigError, InvalidJob) as exc:
            return Malformed(str(exc))
        return job if limit_key is None else dataclasses.replace(job, limit_key=limit_key)

    def _triage(self, items: list[Item]) -> tuple[list[NewJob], list[Token],
                                                  list[tuple[Item, str]]]:
        """Decode and key each item once: the jobs with their tokens, and the malformed.

        An entry deleted while pending (nothing to record) goes to the acks at once.
        """
        jobs: list[NewJob] = []
        tokens: list[Token] = []
        bad: list[tuple[Item, str]] = []
        decode, job_of = self._decode, self._job
        max_attempts = self.runtime.max_attempts
        for item in items:
            decoded = decode(item)
            if decoded is None:
                self.state.vanished += 1
                self.state.acks.append(item.token)
                continue
            job = decoded if isinstance(decoded, Malformed) else job_of(decoded, max_attempts)
            if isinstance(job, Malformed):
                bad.append((item, job.reason))
            else:
                jobs.append(job)
                tokens.append(item.token)
        return jobs, tokens, bad

    async def _process(self, items: list[Item]) -> None:
        """Submit a batch as one `Submit`, after dead-lettering its malformed items.

        The only awaits are one per batch: the dead letters' write, then the send to the
        syncer (which returns once the message is in its mailbox: the next batch is read
        while this one commits).
        """
        jobs, tokens, bad = self._triage(items)
        self.state.read += len(items)
        if bad:
            await self._dead_letter(bad)
            self.state.dead_lettered += len(bad)
            log.warning("%s: %d malformed item(s) dead-lettered, the first because: %s",
                        self.state.label, len(bad), bad[0][1])
        if jobs:
            self.outstanding += len(tokens)
            try:
                submit = Submit(tuple(jobs), on_commit=self._on_commit(tokens))
                await self._unless_stopped(lambda: self.runtime.send(submit))
            except BaseException:
                self.outstanding -= len(tokens)
                raise
            self.state.submitted += len(jobs)
        self._notify()

    def _on_commit(self, tokens: list[Token]) -> Callable[[SubmitResult], None]:
        state = self.state

        def committed(result: SubmitResult) -> None:
            self.outstanding -= len(tokens)
            state.committed += len(tokens)
            state.acks.extend(tokens)
            self._notify()

        return committed

    async def _ack_loop(self) -> None:
        state = self.state
        backoff = _Backoff(*self.backoff)
        while True:
            if not state.acks:
                await self._wait_change(1.0)
                continue
            tokens = state.acks[:_ACK_CHUNK]
            del state.acks[:_ACK_CHUNK]
            self._acking = len(tokens)
            try:
                await self._acknowledge(tokens)
            except FAULTS as exc:
                state.acks[:0] = tokens
                self._acking = 0
                state.down(exc)
                await anyio.sleep(backoff.next())
                continue
            except ResponseError as exc:
                self._acking = 0
                if not is_nogroup(exc):
                    state.acks[:0] = tokens
                    raise
                log.warning("%s: cannot acknowledge %d entr(ies), the group is gone: they "
                            "are read again once it is recreated", state.label,
                            len(tokens))
                continue
            self._acking = 0
            state.acked += len(tokens)
            backoff.reset()
            self._notify()

    async def _drain(self) -> None:
        """On stop: wait for what was submitted to commit and be acknowledged.

        Only while it progresses (a commit or an ack every ``_DRAIN_STALL`` seconds), and
        for ``_DRAIN_MAX`` seconds at most: when the syncer itself crashed (a rest-for-one
        restart) nothing will commit until the next incarnation, which acknowledges what
        this one leaves (the tokens belong to the source). Whatever is left unacknowledged
        is still pending upstream and is read again: nothing is lost by giving up.
        """
        with anyio.move_on_after(_DRAIN_MAX):
            while not self._idle():
                with anyio.move_on_after(_DRAIN_STALL) as stall:
                    await self._changed.wait()
                if stall.cancelled_caught:
                    return

    # --- shared steps ----------------------------------------------------------------

    async def _check_server(self) -> bool:
        """Note Redis's run_id (True when it changed: a restart); warn about eviction once."""
        try:
            info = await self.redis.info("server")
        except ResponseError:  # INFO not allowed to this user: restarts go unnoticed
            info = {}
        run_id = str(info["run_id"]) if "run_id" in info else None
        state = self.state
        restarted = None not in (state.run_id, run_id) and run_id != state.run_id
        if restarted:
            state.redis_restarts += 1
            log.warning("%s: Redis restarted (run_id %s -> %s)", state.label,
                        state.run_id, run_id)
        state.run_id = run_id
        if not state.memory_checked:
            state.memory_checked = True
            warning = await _eviction_warning(self.redis)
            if warning is not None:
                state.warnings.append(warning)
                log.warning("%s: %s", state.label, warning)
        return restarted

    async def _join(self, meta_key: str, seq_key: str) -> None:
        """Set this store's consumer name (its meta, else an atomic INCR, then kept).

        After every (re)connect the sequence is pushed up to at least our number, so a
        Redis that lost it (a restart without persistence) never hands our name to
        another store.
        """
        state = self.state
        if state.consumer is None:
            name = await self.runtime.get_meta(meta_key)
            if name is None:
                n = await self.redis.incr(seq_key)
                reply: Reply[str] = Reply()
                msg = SetMeta(meta_key, f"syncward-{n}", only_if_absent=True, reply=reply)
                await self._unless_stopped(lambda: self.runtime.send(msg))
                name = await self._unless_stopped(reply.wait)
            state.consumer = name
        number = state.consumer.rpartition("-")[2]
        if number.isdigit():
            await self.redis.eval(_KEEP_AHEAD, 1, seq_key, number)

    async def _gap(self, reason: str) -> None:
        """Record a loss Redis caused: log, status, the store's event log."""
        state = self.state
        at = time.time()
        gap = {"at": at, "reason": reason}
        state.gaps.append(gap)
        log.warning("%s: gap: %s", state.label, reason)
        event = RecordEvent(kind="source_gap", at=at,
                            detail={"source": self.name, **state.target, **gap})
        await self._unless_stopped(lambda: self.runtime.send(event))


# --- source URLs ---------------------------------------------------------------------


def number_param(params: dict[str, str], name: str, kind: Callable[[str], Any]) -> Any:
    """``kind(params[name])``, or a `ConfigError` naming the parameter."""
    try:
        return kind(params[name])
    except ValueError:
        raise ConfigError(f"parameter {name}={params[name]!r} is not a number") from None


def flag_param(value: str, name: str) -> bool:
    """A boolean query parameter (1/0, true/false, yes/no, on/off)."""
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"parameter {name}={value!r}: expected true or false")
