"""The manifest source: a file (or stdin) of job identities, read as a stream.

Formats (chosen from the file's extension, or explicitly; stdin defaults to ``txt``):

* ``txt``   one identity per line, ``{"id": line}`` (``--key NAME`` renames the field);
  surrounding whitespace is stripped, blank lines and ``#`` comments are ignored.
* ``csv``   a header line, then rows; the identity is the ``key`` columns (default ``id``,
  values stripped of surrounding whitespace), every other column is the payload (as text).
* ``jsonl`` one JSON object per line: ``{"identity": {...}, "payload": {...},
  "priority": 10}`` (payload and priority optional, no other fields; see `JobSpec` for
  what a priority means); blank lines are ignored.

Iterating a `Manifest` yields, in file order, an `Entry` ``(line, spec)`` for each good
line and a `Rejection` ``(line, reason, raw)`` for each bad one (not UTF-8, not parseable,
wrong columns, an empty or invalid identity). Line numbers are physical, 1-based lines of
the file, so a person can open the file at the reported line. One bad line never stops
the others.

Design notes. The file is opened in binary and read a line at a time: memory does not
grow with the file (a 10-million-line manifest is fine), and an undecodable line is
rejected on its own instead of failing the whole read. `Entry` and `Rejection` are
NamedTuples rather than dataclasses because they are exactly the tuples
`Runtime.submit_entries` and `Runtime.reject_lines` take. Problems with the *file* rather
than a line (unreadable, no header, a ``key`` column the header lacks) raise `ConfigError`
when the manifest is opened, before anything has been read.
"""

from __future__ import annotations

import csv
import enum
import json
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple, TypeAlias

from syncward.errors import ConfigError, InvalidJob
from syncward.jobs import JobSpec, canonical_identity

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = [
    "STDIN",
    "Entry",
    "Manifest",
    "ManifestFormat",
    "ManifestItem",
    "Rejection",
    "detect_format",
    "open_manifest",
]

STDIN = "-"
_RAW_MAX = 500  # characters of a rejected line kept for the report
_JSONL_FIELDS = frozenset({"identity", "payload", "priority"})
_PRIORITY_LIMIT = 1_000_000_000


class ManifestFormat(enum.StrEnum):
    TXT = "txt"
    CSV = "csv"
    JSONL = "jsonl"


_EXTENSIONS = {
    ".txt": ManifestFormat.TXT, ".list": ManifestFormat.TXT,
    ".csv": ManifestFormat.CSV,
    ".jsonl": ManifestFormat.JSONL, ".ndjson": ManifestFormat.JSONL,
}


class Entry(NamedTuple):
    """A good manifest line: its number and the job it asks for."""

    line: int
    spec: JobSpec


class Rejection(NamedTuple):
    """A bad manifest line: its number, why, and (the start of) its text."""

    line: int
    reason: str
    raw: str


ManifestItem: TypeAlias = Entry | Rejection


def detect_format(source: str, explicit: str | None = None) -> ManifestFormat:
    """The format of ``source``: ``explicit`` if given, else from the extension.

    Raises:
        ConfigError: an unknown explicit format, or an extension that names none.
    """
    if explicit is not None:
        try:
            return ManifestFormat(explicit.lower())
        except ValueError:
            names = ", ".join(f.value for f in ManifestFormat)
            raise ConfigError(f"unknown manifest format {explicit!r} (use {names})") from None
    if source == STDIN:
        return ManifestFormat.TXT
    suffix = Path(source).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise ConfigError(
            f"cannot tell the format of manifest {source} from its extension {suffix or '(none)'}"
            ": use .txt, .csv or .jsonl, or --format")
    return _EXTENSIONS[suffix]


def open_manifest(source: str, *, fmt: ManifestFormat | str | None = None,
                  key: Sequence[str] | None = None, stdin: IO[bytes] | None = None,
                  close_stdin: bool = False, priority_column: str | None = None) -> Manifest:
    """Open ``source`` (a path, or ``-`` for ``stdin``) for streaming.

    ``key`` names the identity columns of a csv (default ``["id"]``) or the identity
    field of a txt manifest (one name). ``stdin`` (default ``sys.stdin.buffer``) is
    closed with the manifest only if ``close_stdin``. The returned manifest must be
    closed (it is a context manager); iterate it once. ``priority_column`` names a csv
    column that holds each job's priority (an integer; empty is 0) instead of payload.
    Raises:
        ConfigError: the file cannot be opened or read, its format is unknown, ``key``
            does not fit the format, a csv lacks a header or a key column, or a
            ``priority_column`` is given for another format or is not in the header.
    """
    if priority_column is not None and detect_format(source, fmt if isinstance(fmt, str)
                                                     else None) is not ManifestFormat.CSV:
        raise ConfigError("--priority-column applies to .csv manifests (a .jsonl line has "
                          "a \"priority\" field)")
    form = fmt if isinstance(fmt, ManifestFormat) else detect_format(source, fmt)
    keys = _check_key(form, key)
    if source == STDIN:
        fh: IO[bytes] = stdin if stdin is not None else sys.stdin.buffer
        owned = close_stdin and stdin is not None
    else:
        try:
            fh = open(source, "rb")  # closed by Manifest.close
        except OSError as exc:
            raise ConfigError(f"cannot read manifest {source}: {exc.strerror or exc}") from None
        owned = True
    try:
        return Manifest(source, form, keys, fh, owned=owned, priority_column=priority_column)
    except BaseException:
        if owned:
            fh.close()
        raise


def _check_key(form: ManifestFormat, key: Sequence[str] | None) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in key) if key else ()
    if any(not k for k in keys):
        raise ConfigError("--key names an empty column")
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--key names a column twice: {','.join(keys)}")
    if form is ManifestFormat.JSONL:
        if keys:
            raise ConfigError("--key does not apply to .jsonl manifests (each line has "
                              "its own \"identity\" object)")
        return ()
    if form is ManifestFormat.TXT and len(keys) > 1:
        raise ConfigError("a .txt manifest has one identity field: give --key one name")
    return keys or ("id",)


class _Lines:
    """Decoded lines of a binary stream, numbered; undecodable ones are set aside."""

    def __init__(self, fh: IO[bytes], source: str) -> None:
        self.fh = fh
        self.source = source
        self.number = 0
        self.bad: list[Rejection] = []
        self.record: list[str] = []  # lines of the csv record being parsed
        self.record_start = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        while True:
            try:
                raw = self.fh.readline()
            except OSError as exc:
                raise ConfigError(f"cannot read manifest {self.source}: "
                                  f"{exc.strerror or exc}") from None
            if not raw:
                raise StopIteration
            self.number += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                self.bad.append(Rejection(self.number, f"not valid UTF-8 (byte {exc.start})",
                                          _raw(raw.decode("utf-8", "replace"))))
                continue
            if self.number == 1 and text.startswith("\ufeff"):
                text = text[1:]
            if not self.record:
                self.record_start = self.number
            self.record.append(text)
            return text


class Manifest:
    """An open manifest; iterate it for `Entry` and `Rejection` items. See the module docs."""

    def __init__(self, source: str, fmt: ManifestFormat, key: tuple[str, ...],
                 fh: IO[bytes], *, owned: bool, priority_column: str | None = None) -> None:
        self.source = source
        self.format = fmt
        self.key = key
        self.priority_column = priority_column
        self._fh = fh
        self._owned = owned
        self._lines = _Lines(fh, source)
        self._csv: Iterator[list[str]] | None = None
        self._header: tuple[str, ...] = ()
        if fmt is ManifestFormat.CSV:
            self._read_header()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owned:
            self._fh.close()

    @property
    def header(self) -> tuple[str, ...]:
        """A csv's column names (empty for other formats)."""
        return self._header

    def __iter__(self) -> Iterator[ManifestItem]:
        match self.format:
            case ManifestFormat.TXT:
                items = self._txt()
            case ManifestFormat.CSV:
                items = self._csv_rows()
            case ManifestFormat.JSONL:
                items = self._jsonl()
        for item in items:
            yield from self._drain_bad()
            yield item
        yield from self._drain_bad()

    def _drain_bad(self) -> Iterator[Rejection]:
        if self._lines.bad:
            bad, self._lines.bad = self._lines.bad, []
            yield from bad

    # --- txt -------------------------------------------------------------------------

    def _txt(self) -> Iterator[ManifestItem]:
        name = self.key[0]
        for text in self._lines:
            self._lines.record.clear()
            value = text.strip()
            if not value or value.startswith("#"):
                continue
            yield _entry(self._lines.number, {name: value}, {}, value)

    # --- jsonl -----------------------------------------------------------------------

    def _jsonl(self) -> Iterator[ManifestItem]:
        for text in self._lines:
            self._lines.record.clear()
            line = self._lines.number
            if not text.strip():
                continue
            yield _jsonl_item(line, text.strip())

    # --- csv -------------------------------------------------------------------------

    def _read_header(self) -> None:
        self._csv = csv.reader(self._lines, strict=True)
        try:
            header: list[str] = []
            while not header:
                self._lines.record.clear()
                header = next(self._csv)
        except StopIteration:
            raise ConfigError(f"manifest {self.source} is empty: a .csv needs a header "
                              "line") from None
        except csv.Error as exc:
            raise ConfigError(f"manifest {self.source}: cannot parse the csv header: "
                              f"{exc}") from None
        finally:
            self._lines.record.clear()
        names = tuple(h.strip() for h in header)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"manifest {self.source}: the csv header repeats column(s) "
                              f"{', '.join(dup)}")
        absent = [k for k in self.key if k not in names]
        if absent:
            raise ConfigError(
                f"manifest {self.source} has no column {', '.join(map(repr, absent))} for "
                f"the identity (its columns: {', '.join(names)}); choose them with --key")
        col = self.priority_column
        if col is not None and (col not in names or col in self.key):
            raise ConfigError(
                f"manifest {self.source}: --priority-column {col!r} is "
                + ("an identity column" if col in self.key else
                   f"not a column (its columns: {', '.join(names)})"))
        self._header = names

    def _csv_rows(self) -> Iterator[ManifestItem]:
        assert self._csv is not None
        lines, header, key = self._lines, self._header, self.key
        while True:
            try:
                row = next(self._csv)
            except StopIteration:
                return
            except csv.Error as exc:
                start, raw = lines.record_start, "".join(lines.record)
                lines.record.clear()
                yield Rejection(start, f"cannot parse csv: {exc}", _raw(raw))
                continue
            start, raw = lines.record_start, "".join(lines.record)
            lines.record.clear()
            if not row or not raw.strip():
                continue  # a blank line
            if len(row) != len(header):
                yield Rejection(start, f"expected {len(header)} columns, got {len(row)}",
                                _raw(raw))
                continue
            fields = dict(zip(header, row, strict=True))
            priority = 0
            if self.priority_column is not None:
                text = fields.pop(self.priority_column).strip()
                try:
                    priority = int(text) if text else 0
                    if not -_PRIORITY_LIMIT <= priority <= _PRIORITY_LIMIT:
                        raise ValueError(text)
                except ValueError:
                    yield Rejection(start, f"column {self.priority_column!r}: the priority "
                                    f"must be an integer from -{_PRIORITY_LIMIT} to "
                                    f"{_PRIORITY_LIMIT}, got {text!r}", _raw(raw))
                    continue
            identity = {k: fields.pop(k).strip() for k in key}
            empty = [k for k, v in identity.items() if not v]
            if empty:
                yield Rejection(start, f"empty identity column {', '.join(map(repr, empty))}",
                                _raw(raw))
                continue
            yield _entry(start, identity, fields, raw, priority)


def _raw(text: str) -> str:
    text = text.rstrip("\r\n")
    return text if len(text) <= _RAW_MAX else text[:_RAW_MAX] + "…"


def _entry(line: int, identity: dict[str, Any], payload: dict[str, Any], raw: str,
           priority: int = 0) -> ManifestItem:
    try:
        canonical_identity(identity)
    except InvalidJob as exc:
        return Rejection(line, str(exc), _raw(raw))
    return Entry(line, JobSpec(identity=identity, payload=payload, priority=priority))


def _jsonl_item(line: int, text: str) -> ManifestItem:
    try:
        obj = json.loads(text)
    except ValueError as exc:
        return Rejection(line, f"not valid JSON: {exc}", _raw(text))
    if not isinstance(obj, dict):
        return Rejection(line, f"expected a JSON object, got {_json_type(obj)}", _raw(text))
    unknown = sorted(set(obj) - _JSONL_FIELDS)
    if unknown:
        return Rejection(line, f"unknown field(s) {', '.join(map(repr, unknown))}: expected "
                         "\"identity\" and optional \"payload\", \"priority\"", _raw(text))
    if "identity" not in obj:
        return Rejection(line, "no \"identity\" field", _raw(text))
    identity, payload = obj["identity"], obj.get("payload", {})
    if not isinstance(identity, dict):
        return Rejection(line, f"\"identity\" must be an object, got {_json_type(identity)}",
                         _raw(text))
    if not isinstance(payload, dict):
        return Rejection(line, f"\"payload\" must be an object, got {_json_type(payload)}",
                         _raw(text))
    priority = obj.get("priority", 0)
    if (isinstance(priority, bool) or not isinstance(priority, int)
            or not -_PRIORITY_LIMIT <= priority <= _PRIORITY_LIMIT):
        return Rejection(line, f"\"priority\" must be an integer from -{_PRIORITY_LIMIT} to "
                         f"{_PRIORITY_LIMIT}, got {priority!r}", _raw(text))
    return _entry(line, identity, payload, text, priority)


def _json_type(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "an array"
        case _:
            return type(value).__name__
