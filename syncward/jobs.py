"""The job domain model: identities, keys, states and the one transition function.

No I/O lives here. Keys are the basis of "never the same work twice": a job's key is
the SHA-256 of a canonical encoding of its identity, so the same identity submitted from
a manifest, a Redis stream or an API call is the same row (UNIQUE in the store).

Canonical encoding (version 1, frozen: `tests/vectors/job_keys.json` pins it):
  * a JSON object with keys sorted, no whitespace, non-ASCII kept as UTF-8;
  * keys and string values NFC-normalised (so "é" typed two ways is one job);
  * types preserved: "1" and 1 encode differently, so they are different jobs;
  * only str and int scalars; floats (and NaN), bools, None, nesting and empty
    identities are refused with `InvalidJob` naming the field.
The encoded bytes are prefixed with a domain tag so a job key can never equal an op key.

Design note (speed): sources key every entry they read, so the common case is short-cut
without changing a byte of the result: an identity that is a plain dict of non-empty
ASCII names to ASCII strings and modest ints is already its own canonical mapping (ASCII
is its own NFC form and cannot hold a lone surrogate), and the encoding goes through one
prebuilt C encoder instead of building a `json.JSONEncoder` per call. Every other
identity takes the general path. `tests/vectors/job_keys.json` and a property test
comparing both paths pin the equality.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

from syncward.errors import IllegalTransition, InvalidJob

__all__ = [
    "ACTIVE",
    "TERMINAL",
    "TRANSITIONS",
    "Identity",
    "Job",
    "JobSpec",
    "JobState",
    "canonical_identity",
    "check_transition",
    "job_key",
    "keyed_identity",
    "op_key",
]

Identity = Mapping[str, "str | int"]

_JOB_TAG = b"syncward.job.v1\n"
_OP_TAG = b"syncward.op.v1\n"


#: Ints below this size encode under any ``sys.set_int_max_str_digits`` (at least 640).
_PLAIN_INT = 1 << 2000


def _nfc(text: str, name: str) -> str:
    """NFC form of ``text``, refusing strings UTF-8 cannot encode (lone surrogates)."""
    out = unicodedata.normalize("NFC", text)
    try:
        out.encode()
    except UnicodeEncodeError as exc:
        raise InvalidJob(f"contains a lone surrogate at index {exc.start}", field=name) from None
    return out


def _canon_scalar(name: str, value: object) -> str | int:
    if isinstance(value, bool):
        raise InvalidJob(f"must be str or int, got bool {value!r}", field=name)
    if isinstance(value, int):
        try:
            int.__repr__(value)  # what json.dumps will do; huge ints exceed Python's digit limit
        except ValueError:
            raise InvalidJob(f"int of {value.bit_length()} bits is too large to encode",
                             field=name) from None
        return value
    if isinstance(value, str):
        return _nfc(value, name)
    if isinstance(value, float):
        what = "NaN" if math.isnan(value) else f"float {value!r}"
        raise InvalidJob(f"must be str or int, got {what} (floats are not exact identities)",
                         field=name)
    raise InvalidJob(f"must be str or int, got {type(value).__name__}", field=name)


def _canon_mapping(fields: Mapping[str, object], *, what: str) -> dict[str, str | int]:
    if not isinstance(fields, Mapping):
        raise InvalidJob(f"{what} must be a mapping of field names to str or int, "
                         f"got {type(fields).__name__}")
    if not fields:
        raise InvalidJob(f"{what} is empty")
    out: dict[str, str | int] = {}
    for raw_name, value in fields.items():
        if not isinstance(raw_name, str) or not raw_name:
            raise InvalidJob(f"{what} field names must be non-empty strings, got {raw_name!r}")
        name = _nfc(raw_name, raw_name)
        if name in out:
            raise InvalidJob("appears twice after unicode normalisation", field=name)
        out[name] = _canon_scalar(name, value)
    return out


def _plain(fields: Mapping[str, object]) -> bool:
    """Whether ``fields`` is its own canonical mapping: a dict of non-empty ASCII names to
    ASCII strings and ints of modest size (what `_canon_mapping` would return unchanged)."""
    if type(fields) is not dict or not fields:
        return False
    for name, value in fields.items():
        if type(name) is not str or not name or not name.isascii():
            return False
        kind = type(value)
        if kind is str:
            if not value.isascii():
                return False
        elif kind is not int or not -_PLAIN_INT < value < _PLAIN_INT:
            return False
    return True


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
# The C encoder JSONEncoder.iterencode builds on every call, built once; no cycle check
# (markers None): what is encoded here is canonical mappings, flat or one level deep.
def _c_encoder() -> Any:
    """CPython's C encoder as `JSONEncoder.iterencode` builds it, or None (the fallback
    `JSONEncoder.encode` gives the same text) where it is missing or takes other args."""
    if c_make_encoder is None:
        return None
    try:
        return c_make_encoder(None, _ENCODER.default, encode_basestring, None, ":", ",",
                              True, False, True)
    except TypeError:
        return None


_C_ENCODER = _c_encoder()


def _text(obj: Mapping[str, Any]) -> str:
    """``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``."""
    if _C_ENCODER is None:
        return _ENCODER.encode(obj)
    return "".join(_C_ENCODER(obj, 0))


def _encode(obj: Mapping[str, Any]) -> bytes:
    return _text(obj).encode()


def canonical_identity(identity: Mapping[str, object]) -> str:
    """The canonical JSON text of an identity (what the store keeps).

    Raises:
        InvalidJob: empty identity, a non-string field name, a value that is not str/int,
            a string with a lone surrogate or an int too large to encode.
    """
    if _plain(identity):
        return _text(identity)
    return _text(_canon_mapping(identity, what="identity"))


def job_key(identity: Mapping[str, object]) -> str:
    """Hex SHA-256 of the canonical identity: the job's permanent name.

    Raises:
        InvalidJob: see `canonical_identity`.
    """
    return keyed_identity(identity)[0]


def keyed_identity(identity: Mapping[str, object]) -> tuple[str, str]:
    """``(job_key(identity), canonical_identity(identity))``, canonicalising once: every
    submit needs both, and the canonical form is most of the cost of either.

    Raises:
        InvalidJob: see `canonical_identity`.
    """
    canonical = canonical_identity(identity)
    return hashlib.sha256(_JOB_TAG + canonical.encode()).hexdigest(), canonical


def op_key(kind: str, job_key: str, /, **context: str | int) -> str:
    """Hex SHA-256 naming one side effect of one job (the operation ledger's key).

    The same kind, job and context always give the same key, so an effect recorded once is
    found again after a crash instead of being run twice.

    Raises:
        InvalidJob: an empty kind or job key, or a context value that is not str/int.
    """
    if not kind or not isinstance(kind, str):
        raise InvalidJob("effect kind must be a non-empty string", field="kind")
    if not job_key or not isinstance(job_key, str):
        raise InvalidJob("job key must be a non-empty string", field="job_key")
    _nfc(job_key, "job_key")  # validated only: the key is hashed as given
    ctx = _canon_mapping(context, what="effect context") if context else {}
    body = {"ctx": ctx, "job": job_key, "kind": _nfc(kind, "kind")}
    return hashlib.sha256(_OP_TAG + _encode(body)).hexdigest()


class JobState(enum.StrEnum):
    """Where a job stands. ``stage`` (user-named milestones) refines LEASED."""

    PLANNED = "planned"
    LEASED = "leased"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # terminal: attempts exhausted or permanent error (the dead-letter set)
    SKIPPED = "skipped"  # terminal: duplicate content or cancelled


TERMINAL: frozenset[JobState] = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.SKIPPED})
ACTIVE: frozenset[JobState] = frozenset({JobState.PLANNED, JobState.LEASED})

#: The one table of legal state changes. LEASED -> LEASED is a renewal or a stage report.
TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.PLANNED: frozenset({JobState.LEASED, JobState.SKIPPED}),
    JobState.LEASED: frozenset(
        {JobState.LEASED, JobState.PLANNED, JobState.SUCCEEDED, JobState.FAILED, JobState.SKIPPED}
    ),
    JobState.FAILED: frozenset({JobState.PLANNED}),  # a person re-queues a dead letter
    JobState.SUCCEEDED: frozenset(),
    JobState.SKIPPED: frozenset(),
}


def check_transition(current: JobState, target: JobState, *, job: str | None = None) -> JobState:
    """Every state change goes through here; returns ``target`` when it is legal.

    Raises:
        IllegalTransition: the table has no edge ``current -> target``.
    """
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(current, target, job=job)
    return target


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What a producer submits: an identity (which names the job) and a payload (which does not).

    ``max_attempts``, ``lease_seconds`` and ``timeout`` override the runtime's defaults for
    this job only. ``priority`` (an int, default 0) counts in seconds of waiting: leasing
    takes the job with the earliest due time minus priority, so a job of priority 60 goes
    before priority-0 jobs that became due up to a minute before it, and never before one
    that has waited longer than that. Higher priority first among jobs due together, and
    no job waits forever: at most the difference in priority longer than without them.
    """

    identity: Mapping[str, str | int]
    payload: Mapping[str, Any] = field(default_factory=dict)
    max_attempts: int | None = None
    lease_seconds: float | None = None
    timeout: float | None = None
    priority: int = 0

    @property
    def key(self) -> str:
        return job_key(self.identity)


@dataclass(frozen=True, slots=True)
class Job:
    """A leased job as a handler sees it.

    ``attempt`` counts from 1; ``stage`` is the last milestone committed by an earlier
    attempt (None on a fresh job), so a retried job can resume where it got to.
    """

    id: int
    key: str
    identity: Mapping[str, str | int]
    payload: Mapping[str, Any]
    attempt: int
    max_attempts: int
    stage: str | None
    fence: int
    lease_seconds: float
    lease_expires_at: float
    timeout: float | None
