"""The store layer: protocols, the meaning of every write, and the backends.

`open_store(url)` picks the backend by the URL's scheme and imports it only then:

* ``sqlite:///path/to/file.db`` (or a bare path): the embedded default;
* ``memory://`` or ``memory://name``: in this process only (tests, examples);
* ``postgresql://user@host:port/db``: a store shared by many processes (the
  ``postgres`` extra).

Nothing outside this package names a concrete backend: the runtime, the command line,
the reports and the actors see `Store` and `StoreReader` only.
"""

from __future__ import annotations

import importlib.util

from syncward.errors import ConfigError, MissingDependency
from syncward.store.base import (
    EventRow,
    JobRow,
    LeaseRow,
    Liveness,
    ManifestComparison,
    OwnerInfo,
    RunInfo,
    RunReject,
    Store,
    StoreReader,
    WorkerRow,
    WorkerState,
)
from syncward.store.urls import redact

__all__ = [
    "EventRow",
    "JobRow",
    "LeaseRow",
    "Liveness",
    "ManifestComparison",
    "OwnerInfo",
    "RunInfo",
    "RunReject",
    "Store",
    "StoreReader",
    "WorkerRow",
    "WorkerState",
    "check_url",
    "open_store",
    "redact",
    "scheme_of",
]

_SCHEMES = ("sqlite", "memory", "postgresql")


def scheme_of(url: str) -> str:
    """The backend a store URL names: "sqlite", "memory" or "postgresql".

    Raises:
        ConfigError: an unknown scheme, naming the ones that are known.
    """
    if "://" not in url:
        if not url:
            raise ConfigError("store URL is empty: expected sqlite:///path/to/file.db")
        return "sqlite"  # a bare path
    scheme = url.split("://", 1)[0].lower()
    if scheme == "postgres":
        scheme = "postgresql"
    if scheme not in _SCHEMES:
        raise ConfigError(
            f"unsupported store URL {redact(url)!r}: expected sqlite:///path/to/file.db, "
            "memory:// or postgresql://user@host:port/db")
    return scheme


def check_url(url: str, *, must_exist: bool, process_local_ok: bool = False) -> str:
    """Check a store URL before anything is done; returns how to name the store to a person.

    ``must_exist`` for commands that never create a store (status, report, ...); a
    process-local store (``memory://``) is refused unless ``process_local_ok``: another
    process cannot see it.

    Raises:
        ConfigError: an unknown scheme, a directory or file that does not exist, or a
            process-local store where a separate process must read it.
    """
    scheme = scheme_of(url)
    if scheme == "memory":
        if not process_local_ok:
            raise ConfigError(f"store {url}: a memory:// store lives inside one process; "
                              "use sqlite:///path/to/file.db or postgresql://...")
        return url
    if scheme == "postgresql":
        return redact(url)
    from syncward.store.sqlite.store import sqlite_path_from_url

    path = sqlite_path_from_url(url)
    parent = path.parent if str(path.parent) else None
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"store {path}: directory {parent} does not exist")
    if must_exist and not path.is_file():
        raise ConfigError(f"store {path} does not exist")
    return str(path)


async def open_store(url: str, *, readonly: bool = False, synchronous: str = "full") -> Store:
    """Open the store at ``url`` (see the module docstring).

    A writable SQLite or memory store is exclusive: opening it takes its owner lock.
    ``synchronous`` applies to SQLite ("full", the default, or "normal").

    Raises:
        ConfigError: an unknown scheme or a malformed URL.
        MissingDependency: the backend's optional dependency is not installed.
        StoreLocked: another runtime holds an exclusive store.
        SchemaTooNew: the store was written by a newer syncward.
        StoreError: a read-only open of a store that does not exist.
    """
    scheme = scheme_of(url)
    if scheme == "memory":
        from syncward.store.memory import MemoryStore

        return await MemoryStore.open(url, readonly=readonly)
    if scheme == "postgresql":
        if importlib.util.find_spec("asyncpg") is None:
            raise MissingDependency("postgres")
        from syncward.store.postgres import PostgresStore

        return await PostgresStore.open(url, readonly=readonly)
    from syncward.store.sqlite import SQLiteStore

    return await SQLiteStore.open(url, readonly=readonly, synchronous=synchronous)
