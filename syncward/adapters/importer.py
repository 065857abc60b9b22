"""The import sources: an existing pipeline's state read as a stream of `ImportRecord`.

Sources, chosen by the name (or ``fmt``):

* ``.jsonl`` — one JSON object per line. Without ``key``, the canonical record
  ``{"identity": {...}, "state": "succeeded", "result": {...}, "error": "...",
  "attempts": 2, "payload": {...}, "max_attempts": 5}`` (identity required; see
  `syncward.imports`). With ``key`` (``--key FIELD``, repeatable), a *flat* record as a
  legacy pipeline wrote it, e.g. ``{"kic": 757076, "status": "downloaded"}``: the
  identity is the key fields (values keep their JSON type: 757076 stays an int, unless
  ``key_text``), the reserved fields ``state``, ``error``, ``attempts``, ``result`` and
  ``max_attempts`` mean what they do in a canonical record, and every other field is
  the payload.
* ``.csv`` — a header line, then rows: the identity is the ``key`` columns (default
  ``id``, text as in a csv manifest), the optional reserved columns are as above
  (``result`` holds JSON text; an empty cell is absent), every other column is payload.
* ``redis://HOST:PORT/DB?list=NAME`` — a Redis list, read without changing it (``LRANGE``
  in chunks, nothing popped or trimmed); each entry is one ``.jsonl`` record, canonical
  or flat as above, and its "line" is its index + 1.

``state`` is the state of a record that names none (default planned); ``key_text`` turns
integer identity values into text, in flat and canonical records alike. Iterating yields,
in order, a `Record` ``(line, record)`` per good line and a `Rejection` ``(line, reason,
raw)`` per bad one; the reason names the field (``field 'state': unknown state ...``).
Lines are physical and 1-based, as in `syncward.adapters.manifest`, whose line reader
and csv parsing this reuses; one bad line never stops the others.

Design notes. Everything streams: a file is read a line at a time and a list a chunk
at a time, so memory does not grow with the source. `chunks` hands a file's records over
in lists of ``size``, each read in a worker thread (the event loop stays free for the
store). A Redis list is read by index: entries pushed at its tail while it is read are
read too, but entries popped from its head meanwhile shift the indices, so stop the
legacy pipeline's consumers first (the README says so). Problems with the source rather
than a line (unreadable, no csv header, a missing key column, a bad URL) raise
`ConfigError` when it is opened, before anything is read.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple, TypeAlias

import anyio

from syncward.adapters.manifest import (
    Entry,
    ManifestFormat,
    Rejection,
    _json_type,
    _Lines,
    _raw,
    open_manifest,
)
from syncward.errors import ConfigError, InvalidJob
from syncward.imports import ImportRecord, describe_invalid, record_from_object, to_import_job
from syncward.jobs import JobSpec, JobState
from syncward.limits import Limit, limit_key_of
from syncward.messages import Import, ImportJob, ImportResult, Reply

if TYPE_CHECKING:
    from collections.abc import (
        AsyncIterable,
        AsyncIterator,
        Awaitable,
        Callable,
        Iterable,
        Iterator,
        Sequence,
    )

    from syncward.adapters.manifest import Manifest

__all__ = [
    "RESERVED",
    "ImportItem",
    "ImportSource",
    "Record",
    "chunks",
    "is_redis_list",
    "open_import",
    "parse_line",
    "record_chunks",
    "redis_chunks",
    "run_import",
]

#: The fields (csv columns) of a flat record that are not payload.
RESERVED = ("state", "error", "attempts", "result", "max_attempts")
_REDIS = ("redis://", "rediss://")
_FORMATS = {".jsonl": ManifestFormat.JSONL, ".ndjson": ManifestFormat.JSONL,
            ".csv": ManifestFormat.CSV}


class Record(NamedTuple):
    """A good line: its number and the record it holds."""

    line: int
    record: ImportRecord


ImportItem: TypeAlias = Record | Rejection


def is_redis_list(source: str) -> bool:
    return source.startswith(_REDIS)


def parse_line(line: int, text: str, *, key: Sequence[str] = (),
               state: JobState = JobState.PLANNED, key_text: bool = False) -> ImportItem:
    """One ``.jsonl`` line (or Redis list entry): canonical, or flat when ``key`` is given."""
    try:
        obj = json.loads(text)
    except ValueError as exc:
        return Rejection(line, f"not valid JSON: {exc}", _raw(text))
    except RecursionError:  # not a ValueError: one such line must not stop the others
        return Rejection(line, "not valid JSON: nested too deeply", _raw(text))
    if not isinstance(obj, dict):
        return Rejection(line, f"expected a JSON object, got {_json_type(obj)}", _raw(text))
    try:
        if key:
            return Record(line, _flat(obj, key, state, key_text))
        record = record_from_object(obj, state=state)
        return Record(line, _text_identity(record) if key_text else record)
    except InvalidJob as exc:
        return Rejection(line, describe_invalid(exc), _raw(text))


def _flat(obj: dict[str, Any], key: Sequence[str], state: JobState, key_text: bool
          ) -> ImportRecord:
    fields = dict(obj)
    for name in key:
        if name not in fields:
            raise InvalidJob("is missing (an identity field, --key)", field=name)
    identity = {k: fields.pop(k) for k in key}
    if key_text:
        identity = _text_values(identity)
    reserved = {name: fields.pop(name) for name in RESERVED if name in fields}
    return ImportRecord(
        identity=identity, state=_or(reserved.get("state"), state),
        result=reserved.get("result"), error=reserved.get("error"),
        attempts=_or(reserved.get("attempts"), 0), payload=fields,
        max_attempts=reserved.get("max_attempts"))


def _text_values(identity: Mapping[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v
            for k, v in identity.items()}


def _text_identity(record: ImportRecord) -> ImportRecord:
    """``record`` with its integer identity values as text (``--key-text``)."""
    if not isinstance(record.identity, Mapping):
        return record  # refused, naming the field, when it is encoded
    return dataclasses.replace(record, identity=_text_values(record.identity))


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


# --- files -------------------------------------------------------------------------------


def open_import(source: str, *, key: Sequence[str] = (), state: JobState = JobState.PLANNED,
                key_text: bool = False, fmt: str | None = None) -> ImportSource:
    """Open a ``.jsonl`` or ``.csv`` file for streaming (close it, or use ``with``).

    Raises:
        ConfigError: an unknown format, a file that cannot be read, a csv without a
            header or without a ``key`` column, a ``key`` naming a field twice.
    """
    form = _format(source, fmt)
    keys = tuple(k.strip() for k in key)
    if any(not k for k in keys) or len(set(keys)) != len(keys):
        raise ConfigError(f"--key: empty or repeated field name in {', '.join(keys)}")
    if form is ManifestFormat.CSV:
        manifest = open_manifest(source, fmt=form, key=keys or ("id",))
        return ImportSource(source, form, keys, state, key_text, manifest=manifest)
    try:
        fh = open(source, "rb")  # closed by ImportSource.close
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc.strerror or exc}") from None
    return ImportSource(source, form, keys, state, key_text, fh=fh)


def _format(source: str, fmt: str | None) -> ManifestFormat:
    if fmt is not None:
        if fmt.lower() not in ("jsonl", "csv"):
            raise ConfigError(f"unknown import format {fmt!r} (use jsonl or csv)")
        return ManifestFormat(fmt.lower())
    suffix = Path(source).suffix.lower()
    if suffix not in _FORMATS:
        raise ConfigError(f"cannot tell the format of {source} from its extension "
                          f"{suffix or '(none)'}: use .jsonl or .csv, --format, or a "
                          "redis://...?list=NAME URL")
    return _FORMATS[suffix]


class ImportSource:
    """An open import file; iterate it once for `Record` and `Rejection` items."""

    def __init__(self, source: str, fmt: ManifestFormat, key: tuple[str, ...],
                 state: JobState, key_text: bool, *, manifest: Manifest | None = None,
                 fh: IO[bytes] | None = None) -> None:
        self.source = source
        self.format = fmt
        self.key = key
        self.state = state
        self.key_text = key_text
        self._manifest = manifest
        self._fh = fh
        self._items: Iterator[ImportItem] | None = None

    def __enter__(self) -> ImportSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._manifest is not None:
            self._manifest.close()
        if self._fh is not None:
            self._fh.close()

    def __iter__(self) -> Iterator[ImportItem]:
        if self._items is None:
            self._items = self._csv() if self._manifest is not None else self._jsonl()
        return self._items

    def take(self, n: int) -> list[ImportItem]:
        """The next ``n`` items (fewer at the end, none after it)."""
        items = iter(self)
        out: list[ImportItem] = []
        for item in items:
            out.append(item)
            if len(out) >= n:
                break
        return out

    def _jsonl(self) -> Iterator[ImportItem]:
        assert self._fh is not None
        lines = _Lines(self._fh, self.source)
        for text in lines:
            lines.record.clear()
            if lines.bad:
                yield from lines.bad
                lines.bad.clear()
            if text.strip():
                yield parse_line(lines.number, text.strip(), key=self.key, state=self.state,
                                 key_text=self.key_text)
        yield from lines.bad

    def _csv(self) -> Iterator[ImportItem]:
        assert self._manifest is not None
        for item in self._manifest:
            if isinstance(item, Entry):
                yield _csv_item(item, self.state)
            else:
                yield item


def _csv_item(entry: Entry, state: JobState) -> ImportItem:
    cells: Mapping[str, Any] = entry.spec.payload
    payload = {k: v for k, v in cells.items() if k not in RESERVED}
    given = {k: cells[k].strip() for k in RESERVED if k in cells and cells[k].strip()}
    raw = json.dumps({**entry.spec.identity, **cells}, ensure_ascii=False)
    try:
        result = None
        if "result" in given:
            try:
                result = json.loads(given["result"])
            except ValueError as exc:
                raise InvalidJob(f"not valid JSON: {exc}", field="result") from None
            except RecursionError:
                raise InvalidJob("not valid JSON: nested too deeply", field="result") from None
        record = ImportRecord(
            identity=entry.spec.identity, state=given.get("state") or state, result=result,
            error=given.get("error"), attempts=_int_cell(given, "attempts", 0) or 0,
            payload=payload, max_attempts=_int_cell(given, "max_attempts", None))
    except InvalidJob as exc:
        return Rejection(entry.line, describe_invalid(exc), _raw(raw))
    return Record(entry.line, record)


def _int_cell(cells: Mapping[str, str], name: str, default: int | None) -> int | None:
    if name not in cells:
        return default
    try:
        return int(cells[name])
    except ValueError:
        raise InvalidJob(f"must be an integer, got {cells[name]!r}", field=name) from None


async def chunks(source: ImportSource, size: int) -> AsyncIterator[list[ImportItem]]:
    """The file's items in lists of ``size``, each read in a worker thread."""
    while True:
        items = await anyio.to_thread.run_sync(source.take, size)
        if not items:
            return
        yield items


# --- a Redis list --------------------------------------------------------------------------


async def redis_chunks(url: str, *, key: Sequence[str] = (),
                       state: JobState = JobState.PLANNED, key_text: bool = False,
                       size: int = 1000) -> AsyncIterator[list[ImportItem]]:
    """The entries of the list ``?list=NAME`` names, ``size`` at a time (``LRANGE``).

    Raises:
        MissingDependency: redis-py is not installed (the ``redis`` extra).
        ConfigError: not a Redis URL, no ``list`` parameter, an unknown parameter.
        ConfigError: also when Redis cannot be reached or read (the message says so).
    """
    from redis.exceptions import RedisError

    from syncward.adapters._redis_base import connect, redact, split_source_url

    base, params = split_source_url(url, ("list",))
    name = params.get("list")
    if not name:
        raise ConfigError("a Redis import source needs ?list=NAME")
    client = connect(base)
    try:
        start = 0
        while True:
            try:
                raw = await client.lrange(name, start, start + size - 1)
            except RedisError as exc:
                raise ConfigError(f"cannot read the Redis list {name!r} at {redact(base)}: "
                                  f"{exc}") from exc
            if not raw:
                return
            yield [_entry(start + i + 1, entry, key, state, key_text)
                   for i, entry in enumerate(raw)]
            start += len(raw)
    finally:
        await client.aclose()


def _entry(line: int, entry: bytes | str, key: Sequence[str], state: JobState,
           key_text: bool) -> ImportItem:
    if isinstance(entry, str):
        return parse_line(line, entry, key=key, state=state, key_text=key_text)
    try:
        text = entry.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(line, f"not valid UTF-8 (byte {exc.start})",
                         _raw(entry.decode("utf-8", "replace")))
    return parse_line(line, text, key=key, state=state, key_text=key_text)


# --- records given to the API, and the import itself ----------------------------------------


async def record_chunks(records: Iterable[ImportRecord | Mapping[str, Any]]
                        | AsyncIterable[ImportRecord | Mapping[str, Any]], size: int
                        ) -> AsyncIterator[list[ImportItem]]:
    """An app's records (`ImportRecord` or the canonical dict form) as numbered items, in
    lists of ``size``; a record's "line" is its position, from 1."""
    out: list[ImportItem] = []
    line = 0
    async for record in _each(records):
        line += 1
        try:
            out.append(Record(line, record_from_object(record)))
        except InvalidJob as exc:
            out.append(Rejection(line, describe_invalid(exc), _raw(repr(record))))
        if len(out) >= size:
            yield out
            out = []
            await anyio.lowlevel.checkpoint()
    if out:
        yield out


async def _each(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if hasattr(items, "__aiter__"):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


def import_limit_key(limits: tuple[Limit, ...]) -> Callable[[ImportJob], str | None] | None:
    """The limit key of an imported job under ``limits`` (None: no limits declared)."""
    if not limits:
        return None

    def key(job: ImportJob) -> str | None:
        return limit_key_of(limits, JobSpec(identity=json.loads(job.identity),
                                            payload=json.loads(job.payload)))
    return key


async def run_import(chunks: AsyncIterable[list[ImportItem]],
                     send: Callable[[Import], Awaitable[None]], *, max_attempts: int,
                     dry_run: bool = False, window: int = 4,
                     on_rejected: Callable[[Rejection], None] | None = None,
                     limit_key: Callable[[ImportJob], str | None] | None = None
                     ) -> ImportResult:
    """Import ``chunks``: one `Import` message per chunk, given to ``send`` (which hands
    it to whatever applies it and sets its reply), at most ``window`` awaiting replies.
    ``limit_key`` names the limit key of a planned job (a runtime's limits).

    Records that cannot become jobs are counted, listed (the first few) and passed to
    ``on_rejected``. Returns the sum of every chunk's result.
    """
    total = ImportResult(dry_run=dry_run)
    replies: list[Reply[ImportResult]] = []
    async for items in chunks:
        jobs = []
        rejected: list[tuple[int, str]] = []
        for item in items:
            if isinstance(item, Rejection):
                rejected.append((item.line, item.reason))
                if on_rejected is not None:
                    on_rejected(item)
                continue
            try:
                job = to_import_job(item.record, max_attempts=max_attempts, line=item.line)
                if limit_key is not None and job.state is JobState.PLANNED:
                    job = dataclasses.replace(job, limit_key=limit_key(job))
                jobs.append(job)
            except InvalidJob as exc:
                bad = Rejection(item.line, describe_invalid(exc), "")
                rejected.append((bad.line, bad.reason))
                if on_rejected is not None:
                    on_rejected(bad)
        if rejected:
            total = total.merged(ImportResult(rejected=len(rejected),
                                              rejected_listed=tuple(rejected)))
        if not jobs:
            continue
        reply: Reply[ImportResult] = Reply()
        await send(Import(tuple(jobs), dry_run=dry_run, reply=reply))
        replies.append(reply)
        while len(replies) >= window or (replies and replies[0].done):
            total = total.merged(await replies.pop(0).wait())
    for reply in replies:
        total = total.merged(await reply.wait())
    return total
