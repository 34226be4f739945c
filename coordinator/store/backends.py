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
    if database.startswith(("postgresql://", "postgres://")):
        if importlib.util.find_spec("psycopg") is None or importlib.util.find_spec("psycopg_pool") is None:
            problems.append("--database postgresql://… needs psycopg: pip install 'commonweights[scale]'")
    elif database not in ("", "sqlite://", "sqlite:") and not database.startswith("sqlite:///"):
        problems.append(
            f"--database {_scheme(database)}: give a postgresql://… or sqlite:///PATH URL (or nothing, for SQLite)"
        )
    if blobs.startswith("s3://"):
        if len(blobs) <= len("s3://"):
            problems.append("--blobs s3:// names no bucket: give s3://BUCKET/PREFIX")
        elif importlib.util.find_spec("obstore") is None:
            problems.append("--blobs s3://… needs obstore: pip install 'commonweights[scale]'")
    elif blobs not in ("", "file://", "file:") and not blobs.startswith("file:///"):
        problems.append(
            f"--blobs {_scheme(blobs)}: give an s3://BUCKET/PREFIX or file:///PATH URL (or nothing, for a folder)"
        )
    return problems


def _scheme(url: str) -> str:
    """How a URL is named in a message: its kind only (the rest may hold a password)."""
    scheme, sep, _ = url.partition("://")
    return f"{scheme}://…" if sep else "(not a URL)"


def open_store(url: str, data_dir: Path, *, clock: Callable[[], float]) -> Store:
    """ "" or sqlite:///PATH → SQLite (data_dir/coordinator.sqlite3 by default); postgresql://… → PostgreSQL."""
    if url in ("", "sqlite://", "sqlite:"):
        return SQLiteStore.open(data_dir / "coordinator.sqlite3", clock=clock)
    if url.startswith("sqlite:///"):
        return SQLiteStore.open(Path(url.removeprefix("sqlite://")), clock=clock)
    if url.startswith(("postgresql://", "postgres://")):
        from coordinator.store.postgresql import PostgresStore

        return PostgresStore.open(url, clock=clock)
    raise StoreError(f"--database {_scheme(url)}: give a postgresql://… or sqlite:///PATH URL (or nothing, for SQLite)")


def open_blobs(url: str, data_dir: Path) -> Blobs:
    """ "" or file:///PATH → a folder (data_dir/blobs by default); s3://BUCKET/PREFIX → object storage."""
    if url in ("", "file://", "file:"):
        return BlobStore(data_dir / "blobs")
    if url.startswith("file:///"):
        return BlobStore(Path(url.removeprefix("file://")))
    if url.startswith("s3://"):
        from coordinator.store.s3 import S3Blobs

        return S3Blobs.open(url, cache=data_dir / "blob-cache")
    raise StoreError(
        f"--blobs {_scheme(url)}: give an s3://BUCKET/PREFIX or file:///PATH URL (or nothing, for a folder)"
    )
