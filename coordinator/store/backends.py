"""Which store and which blobs a coordinator runs on, from the URLs an admin gives `coordinator serve`.

    >>> store = open_store("", data_dir, clock=time.time)                          # SQLite in data_dir
    >>> store = open_store("postgresql://cw@db/commonweights", data_dir, clock=time.time)
    >>> blobs = open_blobs("", data_dir)                                           # data_dir/blobs
    >>> blobs = open_blobs("s3://commonweights/prod", data_dir)                    # endpoint from AWS_*

The embedded default (nothing given) is one SQLite file and one folder under the data directory.
PostgreSQL and S3 are for state that outgrows one machine; they need the `scale` extra.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from coordinator.store.blobs import Blobs, BlobStore
from coordinator.store.interface import Store
from coordinator.store.rows import StoreError
from coordinator.store.sqlite import SQLiteStore

__all__ = ["open_blobs", "open_store", "url_problems"]


def url_problems(database: str, blobs: str) -> list[str]:
    """What is wrong with a coordinator's --database and --blobs before anything is opened: an unknown
    kind of URL, or the `scale` extra missing for PostgreSQL or S3 (each a sentence an admin can act on)."""
    problems = []
    kind = _database_kind(database)
    if kind is None:
        problems.append(_unknown_database(database))
    elif kind == "postgresql" and (
        importlib.util.find_spec("psycopg") is None or importlib.util.find_spec("psycopg_pool") is None
    ):
        problems.append("--database postgresql://… needs psycopg: pip install 'commonweights[scale]'")
    kind = _blobs_kind(blobs)
    if kind is None:
        problems.append(_unknown_blobs(blobs))
    elif kind == "s3" and len(blobs) <= len("s3://"):
        problems.append("--blobs s3:// names no bucket: give s3://BUCKET/PREFIX")
    elif kind == "s3" and importlib.util.find_spec("obstore") is None:
        problems.append("--blobs s3://… needs obstore: pip install 'commonweights[scale]'")
    return problems


def _database_kind(url: str) -> str | None:
    """ "sqlite" (in the data dir), "sqlite-file", "postgresql", or None for a URL of no kind we open."""
    if url in ("", "sqlite://", "sqlite:"):
        return "sqlite"
    if url.startswith("sqlite:///"):
        return "sqlite-file"
    return "postgresql" if url.startswith(("postgresql://", "postgres://")) else None


def _blobs_kind(url: str) -> str | None:
    """ "folder" (in the data dir), "folder-path", "s3", or None for a URL of no kind we open."""
    if url in ("", "file://", "file:"):
        return "folder"
    if url.startswith("file:///"):
        return "folder-path"
    return "s3" if url.startswith("s3://") else None


def _scheme(url: str) -> str:
    """How a URL is named in a message: its kind only (the rest may hold a password)."""
    scheme, sep, _ = url.partition("://")
    return f"{scheme}://…" if sep else "(not a URL)"


def _unknown_database(url: str) -> str:
    return f"--database {_scheme(url)}: give a postgresql://… or sqlite:///PATH URL (or nothing, for SQLite)"


def _unknown_blobs(url: str) -> str:
    return f"--blobs {_scheme(url)}: give an s3://BUCKET/PREFIX or file:///PATH URL (or nothing, for a folder)"


def open_store(url: str, data_dir: Path, *, clock: Callable[[], float]) -> Store:
    """ "" or sqlite:///PATH → SQLite (data_dir/coordinator.sqlite3 by default); postgresql://… → PostgreSQL."""
    kind = _database_kind(url)
    if kind == "sqlite":
        return SQLiteStore.open(data_dir / "coordinator.sqlite3", clock=clock)
    if kind == "sqlite-file":
        return SQLiteStore.open(Path(url.removeprefix("sqlite://")), clock=clock)
    if kind == "postgresql":
        from coordinator.store.postgresql import PostgresStore

        return PostgresStore.open(url, clock=clock)
    raise StoreError(_unknown_database(url))


def open_blobs(url: str, data_dir: Path) -> Blobs:
    """ "" or file:///PATH → a folder (data_dir/blobs by default); s3://BUCKET/PREFIX → object storage."""
    kind = _blobs_kind(url)
    if kind == "folder":
        return BlobStore(data_dir / "blobs")
    if kind == "folder-path":
        return BlobStore(Path(url.removeprefix("file://")))
    if kind == "s3":
        from coordinator.store.s3 import S3Blobs

        return S3Blobs.open(url, cache=data_dir / "blob-cache")
    raise StoreError(_unknown_blobs(url))
