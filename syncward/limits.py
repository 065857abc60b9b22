"""Limits per key: at most N jobs at once and R starts per second for each value of a key
taken from the job (the URL's host, a tenant).

A runtime declares them, ``Runtime(limits=[Limit("host", key=..., concurrency=2,
rate=5)])``; at submit, the first limit whose ``key`` function returns a value names the
job's *limit key* (``"host:archive.example.org"``), stored with the job. Leasing enforces
them where leases are granted (`syncward.store.apply`): a job whose key has no room is not
leased at all, so it never sits in a downloader waiting for its turn, and on a store
several runtimes share the counts are the store's own (leased rows, one rate state per key),
so the limits hold for the whole cluster.

The rate is a GCRA (generic cell rate algorithm, the "virtual scheduling" form of a token
bucket): one number per key, its *theoretical arrival time* ``tat``. A start at ``now`` is
allowed when ``tat - now <= (burst - 1) / rate``, and moves ``tat`` to ``max(tat, now) +
1 / rate``. So starts are spaced at least ``1 / rate`` apart once the burst is spent, and
over any window of ``w`` seconds at most ``burst + rate * w`` jobs start (with the
default burst of 1: at most ``rate * w`` in any half-open window). The arithmetic is ours
because it must run inside the store's lease transaction on the store's own rows; the
well-kept rate-limit libraries (``limits``, ``aiolimiter``, ``pyrate-limiter``) keep their
state in their own storage (process memory, Redis) and could not hold across a cluster
sharing one PostgreSQL, nor roll back with a lease that did not commit.

A handler's ``Retry(after=..., hold_key=True)`` (the HTTP adapter does it for a 429 or a
503 with ``Retry-After``) holds back the whole key until then: every job of that key waits,
not only the one that was told to.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from syncward.errors import ConfigError, InvalidJob

if TYPE_CHECKING:
    from syncward.jobs import JobSpec

__all__ = ["KeyBudget", "Limit", "LimitRule", "limit_key_of", "rules_of", "split_limit_key"]

#: What a limit's key function gets: the job as submitted.
KeyFunction = Callable[["JobSpec"], "str | int | None"]


@dataclass(frozen=True, slots=True)
class LimitRule:
    """The numbers of one limit, as the store applies them (no key function)."""

    concurrency: int | None = None
    rate: float | None = None  # starts per second
    burst: int = 1

    @property
    def interval(self) -> float:
        return 1.0 / self.rate if self.rate else 0.0

    @property
    def tolerance(self) -> float:
        return (self.burst - 1) * self.interval


@dataclass(frozen=True)
class Limit:
    """At most ``concurrency`` jobs at once and ``rate`` starts per second (bursts of up to
    ``burst``) for each value ``key(spec)`` returns; ``None`` from ``key`` means the job is
    not subject to this limit. ``name`` prefixes the stored key and must be unique among a
    runtime's limits; every runtime sharing a store should declare the same limits.

    Raises:
        ConfigError: naming the limit and the field (a limit of 0, a rate that is not a
            positive number, no key function, a name with ``:``).
    """

    name: str
    key: KeyFunction
    concurrency: int | None = None
    rate: float | None = None
    burst: int = 1

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name or ":" in name:
            raise ConfigError(f"limit name must be a non-empty string without ':', got {name!r}")
        if not callable(self.key):
            raise ConfigError(f"limit {name!r}: key must be a function of the job spec")
        c = self.concurrency
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
            raise ConfigError(f"limit {name!r}: concurrency must be an int >= 1 (or None), "
                              f"got {c!r}")
        r = self.rate
        if r is not None and (isinstance(r, bool) or not isinstance(r, int | float)
                              or not math.isfinite(r) or r <= 0):
            raise ConfigError(f"limit {name!r}: rate must be a positive number of starts per "
                              f"second (or None), got {r!r}")
        b = self.burst
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ConfigError(f"limit {name!r}: burst must be an int >= 1, got {b!r}")
        if c is None and r is None:
            raise ConfigError(f"limit {name!r}: give a concurrency, a rate or both")

    @classmethod
    def from_option(cls, spec: str) -> Limit:
        """A limit from the command line's ``FIELD:concurrency=N,rate=R,burst=B``.

        ``FIELD`` names the job's field whose value is the key (the identity's, else the
        payload's); ``host`` is the host of the job's ``url`` field. Give a concurrency,
        a rate or both; ``burst`` is optional.

        Raises:
            ConfigError: naming the option and what is wrong with it.
        """
        field_name, sep, rest = spec.partition(":")
        if not sep or not field_name or not rest:
            raise ConfigError(f"--limit {spec!r}: expected FIELD:concurrency=N,rate=R "
                              "(e.g. host:concurrency=4,rate=5)")
        numbers: dict[str, str] = {}
        for part in rest.split(","):
            name, eq, value = part.partition("=")
            name = name.strip()
            if not eq or name not in ("concurrency", "rate", "burst"):
                raise ConfigError(f"--limit {spec!r}: unknown setting {part.strip()!r} "
                                  "(concurrency, rate, burst)")
            if name in numbers:
                raise ConfigError(f"--limit {spec!r}: {name} is given twice")
            numbers[name] = value.strip()
        try:
            concurrency = int(numbers["concurrency"]) if "concurrency" in numbers else None
            rate = float(numbers["rate"]) if "rate" in numbers else None
            burst = int(numbers["burst"]) if "burst" in numbers else 1
        except ValueError as exc:
            raise ConfigError(f"--limit {spec!r}: {exc}") from None
        try:
            return cls(field_name, key=_field_key(field_name), concurrency=concurrency,
                       rate=rate, burst=burst)
        except ConfigError as exc:
            raise ConfigError(f"--limit {spec!r}: {exc}") from None

    @property
    def rule(self) -> LimitRule:
        return LimitRule(self.concurrency, None if self.rate is None else float(self.rate),
                         self.burst)


def _field_key(name: str) -> KeyFunction:
    """The key function of a command-line limit: a field of the job, or its URL's host."""

    def value(spec: JobSpec, field_name: str) -> object:
        found = spec.identity.get(field_name)
        return spec.payload.get(field_name) if found is None else found

    if name == "host":
        def host(spec: JobSpec) -> str | None:
            url = value(spec, "url")
            if not isinstance(url, str):
                return None
            try:
                return urlsplit(url).hostname
            except ValueError:  # not a URL: no host to limit (the handler will say more)
                return None
        return host

    def field_value(spec: JobSpec) -> str | int | None:
        found = value(spec, name)
        return found if isinstance(found, str | int) and not isinstance(found, bool) else None
    return field_value


def limit_key_of(limits: tuple[Limit, ...], spec: JobSpec) -> str | None:
    """The stored limit key of ``spec``: the first limit whose key function returns a value.

    Raises:
        InvalidJob: a key function raised on this job (its data is what is wrong: the job
            is refused, as any other invalid job, naming the limit).
        ConfigError: a key function returned something other than str/int/None.
    """
    for limit in limits:
        try:
            value: Any = limit.key(spec)
        except Exception as exc:
            raise InvalidJob(f"key function failed on {dict(spec.identity)!r}: "
                             f"{type(exc).__name__}: {exc}", field=f"limit {limit.name}"
                             ) from exc
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ConfigError(f"limit {limit.name!r}: key function must return str, int or "
                              f"None, got {type(value).__name__}")
        return f"{limit.name}:{value}"
    return None


def split_limit_key(key: str) -> str:
    """The limit name of a stored limit key."""
    return key.partition(":")[0]


@dataclass(slots=True)
class KeyBudget:
    """One key's room in one lease: how many may start now, and what the rate state
    becomes as they do (the applier's arithmetic, the same on every backend)."""

    key: str
    rule: LimitRule | None  # None: this runtime declares no such limit: not limited
    leased: int
    tat: float | None
    held_until: float | None
    changed: bool = False

    def blocked_until(self, now: float) -> float | None:
        """When the rate or a hold next lets a job start, if that is after ``now``."""
        at = None
        if self.held_until is not None and self.held_until > now:
            at = self.held_until
        rule = self.rule
        if rule is not None and rule.rate and self.tat is not None:
            ready = self.tat - rule.tolerance
            if ready > now:
                at = ready if at is None else max(at, ready)
        return at

    def room(self, now: float, n: int) -> int:
        """How many jobs may start now, at most ``n``: what `take` would allow, counted
        at once (the rate's share in closed form)."""
        rule = self.rule
        if rule is None:
            return n
        if self.held_until is not None and self.held_until > now:
            return 0
        room = n
        if rule.concurrency is not None:
            room = min(room, rule.concurrency - self.leased)
        if rule.rate:
            ahead = 0.0 if self.tat is None else max(self.tat - now, 0.0)
            if ahead > rule.tolerance + 1e-9:
                return 0
            room = min(room, int((rule.tolerance - ahead + 1e-9) // rule.interval) + 1)
        return max(room, 0)

    def take_many(self, now: float, k: int) -> None:
        """Start ``k`` jobs now (no more than `room` allowed): `take` ``k`` times."""
        rule = self.rule
        if rule is None or k <= 0:
            return
        self.leased += k
        if rule.rate:
            tat = now if self.tat is None else max(self.tat, now)
            self.tat = tat + k * rule.interval
            self.changed = True

    def take(self, now: float) -> bool:
        """Start one job now if the limit allows it; updates the state."""
        rule = self.rule
        if rule is None:
            return True
        if self.held_until is not None and self.held_until > now:
            return False
        if rule.concurrency is not None and self.leased >= rule.concurrency:
            return False
        if rule.rate:
            tat = now if self.tat is None else max(self.tat, now)
            if tat - now > rule.tolerance + 1e-9:
                return False
            self.tat = tat + rule.interval
            self.changed = True
        self.leased += 1
        return True


def rules_of(limits: tuple[Limit, ...]) -> Mapping[str, LimitRule]:
    return {limit.name: limit.rule for limit in limits}
