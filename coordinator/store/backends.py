"""Which store and which blobs a coordinator runs on, from the URLs an admin gives `coordinator serve`.

    >>> store = open_store("", data_dir, clock=time.time)                          # SQLite in data_dir
    >>> store = open_store("postgresql://cw@db/commonweights", data_dir, clock=time.time)
    >>> blobs = open_blobs("", data_dir)                                           # data_dir/blobs
    >>> blobs = open_blobs("s3://commonweights/prod", data_dir)                    # endpoint from AWS_*

The embedded default (nothing given) is one SQLite file and one folder under the data directory.
PostgreSQL and S3 are for several replicas sharing one campaign's state; they need the `scale` extra.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from coordinator.store.blobs import Blobs, BlobStore
from coordinator.store.interface import Store
from coordinator.store.rows import StoreError
from coordinator.store.sqlite import SQLiteStore

__all__ = ["BLOBS_SCHEMES", "DATABASE_SCHEMES", "open_blobs", "open_store"]

DATABASE_SCHEMES = ("sqlite", "postgresql", "postgres")
BLOBS_SCHEMES = ("file", "s3")


def open_store(url: str, data_dir: Path, *, clock: Callable[[], float]) -> Store:
    """ "" or sqlite:///PATH → SQLite (data_dir/coordinator.sqlite3 by default); postgresql://… → PostgreSQL."""
    if url in ("", "sqlite://", "sqlite:"):
        return SQLiteStore.open(data_dir / "coordinator.sqlite3", clock=clock)
    if url.startswith("sqlite:///"):
        return SQLiteStore.open(Path(url.removeprefix("sqlite://")), clock=clock)
    if url.startswith(("postgresql://", "postgres://")):
        from coordinator.store.postgresql import PostgresStore

        return PostgresStore.open(url, clock=clock)
    raise StoreError(f"--database {url!r}: give a postgresql://… or sqlite:///PATH URL (or nothing, for SQLite)")


def open_blobs(url: str, data_dir: Path) -> Blobs:
    """ "" or file:///PATH → a folder (data_dir/blobs by default); s3://BUCKET/PREFIX → object storage."""
    if url in ("", "file://", "file:"):
        return BlobStore(data_dir / "blobs")
    if url.startswith("file:///"):
        return BlobStore(Path(url.removeprefix("file://")))
    if url.startswith("s3://"):
        from coordinator.store.s3 import S3Blobs

        return S3Blobs.open(url, cache=data_dir / "blob-cache")
    raise StoreError(f"--blobs {url!r}: give an s3://BUCKET/PREFIX or file:///PATH URL (or nothing, for a folder)")
