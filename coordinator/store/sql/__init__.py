"""The store's SQL, written once for every database it runs on (SQLite, PostgreSQL).

    >>> class SQLiteStore(SQLStore, SQLiteDatabase): ...

One mixin per concern of `coordinator.store.interface` (campaigns, work, submissions, volunteers,
tokens, accounts) over `SQLDatabase` (`database.py`), and the schema as versioned migrations (`schema.py`). A
backend adds the connection: `coordinator.store.sqlite`, `coordinator.store.postgresql`.
"""

from __future__ import annotations

from coordinator.store.sql.accounts import SQLAccounts
from coordinator.store.sql.campaigns import SQLCampaigns
from coordinator.store.sql.database import SQLDatabase
from coordinator.store.sql.schema import MIGRATIONS, SCHEMA_VERSION
from coordinator.store.sql.submissions import SQLSubmissions
from coordinator.store.sql.tokens import SQLTokens
from coordinator.store.sql.volunteers import SQLVolunteers
from coordinator.store.sql.work import SQLWork

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLDatabase", "SQLStore"]


class SQLStore(SQLCampaigns, SQLWork, SQLSubmissions, SQLVolunteers, SQLTokens, SQLAccounts):
    """Every concern's mixin: a whole `Store` once a backend supplies the database."""
