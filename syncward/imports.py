"""Imported job records: an existing pipeline's state, as jobs created in their states.

An `ImportRecord` is what a reader (`syncward.adapters.importer`) or an embedding app
(`Runtime.import_jobs`) hands over: an identity (which names the job, keyed exactly as a
submit's, so a later run of the same manifest finds it), and optionally the state it is
in (``planned``, ``succeeded``, ``failed`` or ``skipped``; ``planned`` when absent), its
result, its last error, the attempts it took and a payload. `to_import_job` checks one
and encodes it as the `ImportJob` the syncer applies; `record_from_object` reads the
canonical record form (a ``.jsonl`` line, a dict given to the API).

No I/O here. Every refusal is an `InvalidJob` naming the field, so a reader can turn it
into one ``file:line: field 'state': ...`` line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from syncward.errors import InvalidJob
from syncward.jobs import JobState, keyed_identity
from syncward.messages import ImportJob

__all__ = [
    "IMPORTABLE",
    "RECORD_FIELDS",
    "ImportRecord",
    "describe_invalid",
    "parse_state",
    "record_from_object",
    "to_import_job",
]

#: The states a job can be imported in (a lease belongs to a live process: never imported).
IMPORTABLE: frozenset[JobState] = frozenset(
    {JobState.PLANNED, JobState.SUCCEEDED, JobState.FAILED, JobState.SKIPPED})
#: The fields of the canonical record form.
RECORD_FIELDS = ("identity", "state", "result", "error", "attempts", "payload", "max_attempts")
_STATE_NAMES = "planned, succeeded, failed or skipped"
_LIMIT = 1_000_000


@dataclass(frozen=True, slots=True)
class ImportRecord:
    """One job to import. ``state`` may be a `JobState` or its name; ``result`` any
    JSON-serialisable value; ``max_attempts`` None takes the importer's default."""

    identity: Mapping[str, Any]
    state: JobState | str = JobState.PLANNED
    result: Any = None
    error: str | None = None
    attempts: int = 0
    payload: Mapping[str, Any] = field(default_factory=dict)
    max_attempts: int | None = None


def parse_state(value: object, *, name: str = "state") -> JobState:
    """The importable state ``value`` names.

    Raises:
        InvalidJob: not a string naming planned, succeeded, failed or skipped.
    """
    if isinstance(value, JobState):
        state = value
    elif isinstance(value, str):
        try:
            state = JobState(value.strip().lower())
        except ValueError:
            raise InvalidJob(f"unknown state {value!r} (expected {_STATE_NAMES})",
                             field=name) from None
    else:
        raise InvalidJob(f"must be a string ({_STATE_NAMES}), got {_kind(value)}", field=name)
    if state not in IMPORTABLE:
        raise InvalidJob(f"a {state.value} job cannot be imported (expected {_STATE_NAMES}; "
                         "import a job in hand as planned)", field=name)
    return state


def record_from_object(obj: object, *, state: JobState = JobState.PLANNED) -> ImportRecord:
    """The canonical record form: ``{"identity": {...}, "state": ..., "result": ...,
    "error": ..., "attempts": n, "payload": {...}, "max_attempts": n}``, identity required;
    ``state`` is the state of a record that has none (null or absent).

    Raises:
        InvalidJob: not an object, an unknown field, or no identity.
    """
    if isinstance(obj, ImportRecord):
        return obj
    if not isinstance(obj, Mapping):
        raise InvalidJob(f"expected a JSON object, got {_kind(obj)}")
    unknown = sorted(str(k) for k in obj if k not in RECORD_FIELDS)
    if unknown:
        raise InvalidJob(f"unknown field (expected {', '.join(RECORD_FIELDS)})",
                         field=unknown[0])
    if "identity" not in obj:
        raise InvalidJob("is missing", field="identity")
    return ImportRecord(
        identity=obj["identity"], state=_or(obj.get("state"), state),
        result=obj.get("result"), error=obj.get("error"),
        attempts=_or(obj.get("attempts"), 0), payload=_or(obj.get("payload"), {}),
        max_attempts=obj.get("max_attempts"))


def to_import_job(record: ImportRecord, *, max_attempts: int, line: int | None
                  ) -> ImportJob:
    """``record`` checked and encoded (key and canonical identity as for a submit).

    Raises:
        InvalidJob: naming the field: an invalid identity, an unknown or leased state,
            attempts or max_attempts out of range, attempts above max_attempts (a planned
            job: not below it, it would run past its limit), an error that is not text, a
            result or payload that is not JSON-serialisable.
    """
    if not isinstance(record.identity, Mapping):
        raise InvalidJob(f"must be an object, got {_kind(record.identity)}", field="identity")
    key, identity = keyed_identity(record.identity)
    state = parse_state(record.state)
    attempts = _count(record.attempts, "attempts", low=0)
    limit = max_attempts if record.max_attempts is None else _count(
        record.max_attempts, "max_attempts", low=1)
    if attempts > limit or (state is JobState.PLANNED and attempts == limit):
        below = "below" if state is JobState.PLANNED else "at most"
        raise InvalidJob(f"{attempts} is too many: a {state.value} job's attempts must be "
                         f"{below} its max_attempts ({limit}); give max_attempts (or "
                         "--max-attempts)", field="attempts")
    if record.error is not None and not isinstance(record.error, str):
        raise InvalidJob(f"must be a string, got {_kind(record.error)}", field="error")
    if record.error is not None and not _encodable(record.error):
        raise InvalidJob("is not valid text (a lone surrogate, as from a \\udXXX escape)",
                         field="error")
    if not isinstance(record.payload, Mapping):
        raise InvalidJob(f"must be an object, got {_kind(record.payload)}", field="payload")
    result = None if record.result is None else _json(record.result, "result")
    payload = "{}" if not record.payload else _json(dict(record.payload), "payload")
    return ImportJob(key=key, identity=identity, payload=payload,
                     state=state, result=result, error=record.error, attempts=attempts,
                     max_attempts=limit, line=line)


def describe_invalid(exc: InvalidJob) -> str:
    """One line for a rejected record: ``field 'state': unknown state ...``."""
    return f"field {exc.field!r}: {exc.reason}" if exc.field is not None else exc.reason


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _count(value: object, name: str, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= _LIMIT:
        raise InvalidJob(f"must be an integer from {low} to {_LIMIT}, got {value!r}",
                         field=name)
    return value


def _json(value: object, name: str) -> str:
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidJob(f"is not JSON-serialisable: {exc}", field=name) from None
    except RecursionError:
        raise InvalidJob("is nested too deeply", field=name) from None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number" if not (isinstance(value, float) and math.isnan(value)) else "NaN"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__
