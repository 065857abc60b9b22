"""Schedules: cron expressions whose ticks become ordinary jobs.

A `Schedule` names a cron expression; every tick of it becomes one job whose identity is
``{"schedule": name, "tick": "<the tick's UTC time, ISO-8601, seconds>"}``. The job key
is the SHA-256 of that identity like every other job's, so the store's UNIQUE key makes a
tick run once however many runtimes submit it, and after any restart: a second submit of
the same tick is a duplicate, not a second job. The actor that submits the ticks is
`syncward.actors.scheduler`.

A handler tells a tick from other jobs by its identity::

    async def handler(job, ctx):
        if (name := job.identity.get("schedule")) is not None:
            return await run_periodic(name, tick=job.identity["tick"], **job.payload)
        ...

Why `cronsim`: it is small (one module), has no dependencies, is typed, is maintained (it
runs the schedules of Healthchecks.io, whose author wrote it), handles daylight-saving
changes as Debian's cron does (a job at 02:30 runs once on the day the clocks jump, not
twice or never) and iterates backwards as well as forwards, which is what finding "the
latest tick missed" needs. Its errors name the field ("Bad minute"). Rejected:
`croniter` (a larger API with python-dateutil behind it, and a maintenance future
that was in doubt in 2024); writing our own parser (the DST rules are where hand-written
cron goes wrong).

Expressions have five fields (minute hour day-of-month month day-of-week), or six with
seconds first; ``L``, ``LW``, ``W#n`` and names (``MON``, ``JAN``) as cronsim takes them.
They are read in the schedule's time zone (``tz``, UTC by default); the tick in the job's
identity is always UTC.
"""

from __future__ import annotations

import json
import math
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from syncward.errors import ConfigError
from syncward.jobs import JobSpec

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["MISSED", "Missed", "Schedule", "format_tick", "parse_tick"]

Missed = Literal["run_once", "skip"]
#: What a schedule does with the ticks that came due while no runtime ran.
MISSED: tuple[Missed, ...] = ("run_once", "skip")

_FIELDS = ("second", "minute", "hour", "day-of-month", "month", "day-of-week")


@dataclass(frozen=True, slots=True)
class Schedule:
    """A named cron expression whose ticks become jobs (see the module docstring).

    ``Schedule("hourly", "0 * * * *", missed="skip")``: the name and the expression,
    then keyword arguments.

    ``missed``: ticks that came due while no runtime on the store ran are submitted
    once (``"run_once"``: the latest of them, one job however many were missed) or not
    at all (``"skip"``). A runtime that starts on a store where the schedule has never
    run begins from its start: nothing is backfilled. ``payload`` is every tick job's
    payload; ``tz`` is the zoneinfo name the expression is read in.

    Raises:
        ConfigError: at construction, naming the schedule and the field: an empty or
            unprintable name, a cron expression cronsim refuses (and which field), one
            that never matches, an unknown ``missed`` or ``tz``, a payload that is not
            a JSON object.
    """

    name: str
    cron: str
    _: KW_ONLY
    missed: Missed = "run_once"
    payload: Mapping[str, Any] = field(default_factory=dict)
    tz: str = "UTC"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() \
                or not self.name.isprintable():
            raise ConfigError(f"schedule name must be a non-empty printable string, "
                              f"got {self.name!r}")
        where = f"schedule {self.name!r}"
        if self.missed not in MISSED:
            raise ConfigError(f"{where}: missed must be one of {', '.join(MISSED)}, "
                              f"got {self.missed!r}")
        try:
            zone = ZoneInfo(self.tz) if isinstance(self.tz, str) and self.tz else None
        except (ZoneInfoNotFoundError, ValueError):
            zone = None
        if zone is None:
            raise ConfigError(f"{where}: tz {self.tz!r} is not a known time zone name")
        problem = _cron_problem(self.cron, zone)
        if problem is not None:
            raise ConfigError(f"{where}: cron {self.cron!r}: {problem}")
        try:
            json.dumps(dict(self.payload))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: payload must be a JSON object: {exc}") from None

    @classmethod
    def from_option(cls, text: str, *, missed: Missed = "run_once", tz: str = "UTC"
                    ) -> Schedule:
        """A schedule from the command line's ``NAME=CRON``.

        Raises:
            ConfigError: no ``=``, or anything the constructor refuses.
        """
        name, sep, cron = text.partition("=")
        if not sep:
            raise ConfigError(f"{text!r}: expected NAME=CRON, e.g. hourly='0 * * * *'")
        return cls(name=name.strip(), cron=cron.strip(), missed=missed, tz=tz)

    @property
    def meta_key(self) -> str:
        """The store metadata key holding the time this schedule's ticks are done up to."""
        return f"schedule:{self.name}:last"

    def next_tick(self, after: float) -> float | None:
        """The first tick strictly after ``after`` (seconds since the epoch), or None
        when there is none in the next fifty years."""
        start = datetime.fromtimestamp(math.floor(after), self._zone)
        return _first(CronSim(self.cron, start))

    def latest_tick(self, at: float) -> float | None:
        """The latest tick at or before ``at``, or None (none in the last fifty years).

        The ticks are the ones `next_tick` walks through. cronsim's reverse iteration can
        pass one over (from a time in the hour repeated when the clocks go back, it
        answers the day before's tick of a daily schedule whose tick that day fell before
        the change), so its answer is walked forwards to the last tick at or before ``at``.
        """
        start = datetime.fromtimestamp(math.floor(at) + 1, self._zone)
        latest = _first(CronSim(self.cron, start, reverse=True))
        while latest is not None and (later := self.next_tick(latest)) is not None \
                and later <= at:
            latest = later
        return latest

    def identity(self, tick: float) -> dict[str, str]:
        """The identity of the job of ``tick``: ``{"schedule": name, "tick": ISO UTC}``."""
        return {"schedule": self.name, "tick": format_tick(tick)}

    def job(self, tick: float) -> JobSpec:
        """The job of ``tick``, as submitted."""
        return JobSpec(identity=self.identity(tick), payload=dict(self.payload))

    @property
    def _zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)  # zoneinfo caches its instances


def format_tick(tick: float) -> str:
    """A tick as it appears in a job's identity: ``2024-05-01T13:00:00Z``."""
    return datetime.fromtimestamp(math.floor(tick), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_tick(text: str) -> float:
    """The inverse of `format_tick`.

    Raises:
        ValueError: not an ISO-8601 time.
    """
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _cron_problem(cron: object, zone: ZoneInfo) -> str | None:
    """Why cronsim refuses ``cron`` (naming the field), or None."""
    if not isinstance(cron, str):
        return f"must be a string, got {type(cron).__name__}"
    try:
        sim = CronSim(cron, datetime.now(zone))
    except CronSimError as exc:
        reason = str(exc)
        for name in _FIELDS:
            if reason == f"Bad {name}":
                return f"bad {name} field"
        if reason == "Wrong number of fields":
            return (f"{len(cron.split())} fields; expected 5 (minute hour day-of-month "
                    "month day-of-week), or 6 with seconds first")
        return reason[:1].lower() + reason[1:]
    if _first(sim) is None:
        return "never matches"
    return None


def _first(sim: CronSim) -> float | None:
    try:
        return next(sim).timestamp()
    except StopIteration:
        return None
