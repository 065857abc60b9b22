"""The SQLite backend: SQL, migrations, the owner lock and the WAL checkpointer only."""

from syncward.store.sqlite.store import SQLiteStore as SQLiteStore

__all__ = ["SQLiteStore"]
