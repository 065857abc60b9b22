"""The file-system half of a download: partial files, hashing, fsync, atomic rename.

Everything here is blocking and runs in a worker thread (``anyio.to_thread``); the
asynchronous half (`syncward.adapters.http`) hands it chunks a batch at a time, so the
event loop never waits on a disk and hashing runs beside it on another core.

Durability: bytes of a partial file are flushed to the OS as they are written (unbuffered
file), which survives a crash of the process; the file is fsync-ed before it is renamed
into place with `os.replace`, and the directory is fsync-ed after, so a FINALIZED stage
is only ever committed for a file whose bytes and name are on disk.
XX: after a power loss a partial file is trusted up to its length; file systems that
order data before metadata (ext4 ``data=ordered``, XFS, btrfs) never expose unwritten
blocks there, others might, and the final hash would then be wrong (not detected unless
the archive publishes checksums).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from typing import TYPE_CHECKING

from syncward.adapters._http_paths import parse_part_name, part_name

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "PartWriter",
    "adopt_final",
    "drop_file",
    "empty_file",
    "finalize",
    "parts_of",
    "prepare_part",
    "remove_all",
    "scan_parts",
]

_READ = 1 << 20


class PartWriter:
    """An open partial file and the SHA-256 of everything in it so far.

    Created by `open` (in a thread); ``write`` appends a batch of chunks and hashes them.
    """

    def __init__(self, path: Path, offset: int) -> None:
        self.path = path
        self.size = offset
        self.hasher = hashlib.sha256()
        self._file = open(path, "r+b" if path.exists() else "w+b", buffering=0)
        try:
            self._file.truncate(offset)
            self._hash_prefix(offset)
        except BaseException:
            self._file.close()
            raise

    @classmethod
    def open(cls, path: Path, offset: int) -> PartWriter:
        """Open ``path`` keeping its first ``offset`` bytes (hashed), dropping the rest."""
        return cls(path, offset)

    def _hash_prefix(self, offset: int) -> None:
        self._file.seek(0)
        left = offset
        while left:
            block = self._file.read(min(_READ, left))
            if not block:
                raise OSError(f"{self.path} is shorter than {offset} bytes")
            self.hasher.update(block)
            left -= len(block)
        self._file.seek(offset)

    def write(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                n = self._file.write(view)
                view = view[n:]
            self.hasher.update(chunk)
            self.size += len(chunk)

    def restart(self) -> None:
        """Drop everything: the server is sending the whole body again."""
        self._file.truncate(0)
        self._file.seek(0)
        self.hasher = hashlib.sha256()
        self.size = 0

    def close(self) -> None:
        self._file.close()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prepare_part(dest: Path, name: str, key: str, validator: str | None, *,
                 resumable: bool, size: int | None, sweep: bool) -> tuple[Path, int]:
    """The partial file to stream into and the offset to resume from (0: from the start).

    Creates ``dest`` and the (empty) partial file if missing, so that once STREAMING is
    committed the partial file exists until it is renamed. With ``sweep`` (an earlier
    attempt ran), this job's partial files for other validators are removed: their bytes
    belong to another version of the resource.
    """
    dest.mkdir(parents=True, exist_ok=True)
    part = dest / part_name(name, key, validator)
    if sweep:
        for other in parts_of(dest, name, key):
            if other != part:
                other.unlink(missing_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    if not resumable or (size is not None and offset > size):
        offset = 0
    with open(part, "r+b" if part.exists() else "wb") as f:
        f.truncate(offset)
    return part, offset


def parts_of(dest: Path, name: str, key: str) -> list[Path]:
    """Job ``key``'s partial files for ``name`` in ``dest``, whatever their validator."""
    found = []
    with os.scandir(dest) as entries:
        for entry in entries:
            parsed = parse_part_name(entry.name)
            if parsed is not None and parsed[0] == name and parsed[1] == key:
                found.append(dest / entry.name)
    return found


def finalize(part: Path, final: Path, record: dict[str, object]) -> dict[str, object]:
    """fsync ``part``, rename it to ``final`` atomically, fsync the directory.

    Idempotent: when ``part`` is gone and ``final`` exists (renamed by an earlier run of
    this very effect whose result was not committed), ``final`` is hashed again instead.
    Raises:
        FileNotFoundError: neither file exists.
    """
    if part.exists():
        _fsync_file(part)
        os.replace(part, final)
    elif final.exists():
        return adopt_final(final, record)
    else:
        raise FileNotFoundError(f"neither {part} nor {final} exists")
    fsync_dir(final.parent)
    return record


def adopt_final(final: Path, record: dict[str, object]) -> dict[str, object]:
    """The finalize record of a file already in place: its size and hash, read again."""
    hasher = hashlib.sha256()
    size = 0
    with open(final, "rb") as f:
        while block := f.read(_READ):
            hasher.update(block)
            size += len(block)
    fsync_dir(final.parent)
    return {**record, "sha256": hasher.hexdigest(), "size": size}


def empty_file(path: Path) -> None:
    """Truncate ``path`` to 0 bytes (a partial file that cannot be resumed)."""
    with open(path, "r+b") as f:
        f.truncate(0)


def drop_file(path: Path) -> bool:
    """Remove ``path`` if it exists (and make that durable); whether it existed."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


def scan_parts(dest: Path) -> list[tuple[Path, str]]:
    """Our partial files in ``dest`` with their job keys (none when ``dest`` is missing)."""
    found: list[tuple[Path, str]] = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(dest) as it:
        for entry in it:
            parsed = parse_part_name(entry.name)
            if parsed is not None and entry.is_file(follow_symlinks=False):
                found.append((dest / entry.name, parsed[1]))
    return found


def remove_all(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
