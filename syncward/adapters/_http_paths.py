"""Where a download may be written: safe file names, destination checks, `.part` names.

A file name comes from the job (an identity field, or the last segment of the URL's path)
and therefore from outside: it is made safe by construction, then the resulting path is
checked once more against the destination directory.

Rules of `safe_name`, in order:
  1. a URL contributes only the last segment of its *raw* path (split on ``/`` before
     any decoding, so ``..%2f..%2fetc%2fpasswd`` stays one segment), percent-decoded once
     (``%252e`` becomes the harmless literal ``%2e``, never ``.``);
  2. NFC normalisation;
  3. path separators (``/`` and ``\\``) and control and format characters (Unicode
     categories Cc and Cf: C0/C1 controls, bidi overrides, zero-width characters) become
     ``_``;
  4. leading dots and surrounding white space are stripped, so the name is never ``.``,
     ``..`` or hidden (our partial files are the hidden ones, so the two never collide);
  5. the name is cut to `MAX_NAME_BYTES` of UTF-8, keeping its extension;
  6. an empty result becomes the caller's fallback (``download-<job key prefix>``).
Windows-reserved names (``CON``, ``NUL``, ...) are not handled: syncward runs on POSIX.

`dest_path` then resolves ``dest_dir / name`` and refuses (``Permanent``) anything whose
parent is not ``dest_dir`` itself, e.g. a symlink planted in ``dest_dir`` under that name.

Partial files are named ``.{name}.{job key}.{validator tag}.part``: hidden, owned by one
job (the start-up reconciliation hook maps each to its job through the key) and bound to
the validator (ETag) its bytes came with, so a changed ETag can never resume onto the
wrong bytes: its partial file has another name.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import TYPE_CHECKING
from urllib.parse import unquote

from syncward.errors import Permanent

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "MAX_NAME_BYTES",
    "PART_SUFFIX",
    "dest_path",
    "name_from_url",
    "parse_part_name",
    "part_name",
    "safe_name",
    "validator_tag",
]

MAX_NAME_BYTES = 150
PART_SUFFIX = ".part"
_NO_VALIDATOR = "0" * 16
_PART_RE = re.compile(r"^\.(?P<name>.+)\.(?P<key>[0-9a-f]{64})\.(?P<tag>[0-9a-f]{16})\.part$")


def name_from_url(url: str) -> str:
    """The last segment of the URL's raw path, percent-decoded once (not yet safe)."""
    rest = url.split("://", 1)[-1]
    path = rest.partition("/")[2] if "/" in rest else ""
    path = path.split("?", 1)[0].split("#", 1)[0]
    return unquote(path.rsplit("/", 1)[-1], errors="replace")


def _clean_char(ch: str) -> str:
    if ch in "/\\" or unicodedata.category(ch) in ("Cc", "Cf"):
        return "_"
    return ch


def _truncate(name: str) -> str:
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or len(ext.encode()) > 16:
        stem, ext = name, ""
    room = MAX_NAME_BYTES - len(ext.encode()) - (1 if ext else 0)
    cut = stem.encode()[:room].decode(errors="ignore")
    return f"{cut}.{ext}" if ext else cut


def safe_name(raw: str, *, fallback: str) -> str:
    """A file name made from ``raw`` that cannot leave its directory (module docstring).

    ``fallback`` (used when nothing usable is left) must itself be safe.
    """
    name = "".join(_clean_char(ch) for ch in unicodedata.normalize("NFC", raw))
    name = _truncate(name.strip().lstrip(".").strip()).strip()
    return name or fallback


def dest_path(dest_dir: Path, name: str) -> Path:
    """``dest_dir / name``, verified to be a direct child of ``dest_dir`` once resolved.

    Raises:
        Permanent: the path would resolve outside ``dest_dir`` (or is ``dest_dir``).
    """
    base = dest_dir.resolve()
    path = (base / name).resolve()
    if path.parent != base or path == base or name in ("", ".", ".."):
        raise Permanent(f"unsafe destination {name!r}: it resolves outside {base}")
    return base / name


def validator_tag(validator: str | None) -> str:
    """16 hex digits naming a validator (an ETag); all zeros when there is none."""
    if validator is None:
        return _NO_VALIDATOR
    return hashlib.sha256(validator.encode()).hexdigest()[:16]


def part_name(name: str, key: str, validator: str | None) -> str:
    """The hidden partial file of job ``key`` downloading ``name`` under ``validator``."""
    return f".{name}.{key}.{validator_tag(validator)}{PART_SUFFIX}"


def parse_part_name(filename: str) -> tuple[str, str, str] | None:
    """``(name, job key, validator tag)`` of one of our partial files, else None."""
    m = _PART_RE.match(filename)
    return (m["name"], m["key"], m["tag"]) if m else None
