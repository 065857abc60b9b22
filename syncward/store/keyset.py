"""A set of job keys kept on disk: distinct keys of a manifest of any size.

SQLite's private temporary database (the file name ""), created on demand and removed
when closed, holds one 32-byte key per row; the caller's memory does not grow with the
manifest. Synchronous: call it from a worker thread.
"""

from __future__ import annotations

import sqlite3

__all__ = ["DiskKeySet"]


class DiskKeySet:
    def __init__(self) -> None:
        self._conn = sqlite3.connect("", check_same_thread=False)
        self._conn.execute("CREATE TABLE seen (key BLOB PRIMARY KEY) WITHOUT ROWID")

    def add(self, key: str) -> bool:
        """Add a hex job key; True when it was not there before."""
        cur = self._conn.execute("INSERT OR IGNORE INTO seen VALUES (?)", (bytes.fromhex(key),))
        return bool(cur.rowcount)

    def close(self) -> None:
        self._conn.close()
