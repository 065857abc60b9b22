"""The PostgreSQL backend (the ``postgres`` extra): SQL, migrations, advisory-lock liveness."""

from syncward.store.postgres.store import PostgresStore as PostgresStore

__all__ = ["PostgresStore"]
