"""Fixtures for the two ways a coordinator keeps its state: the embedded SQLite + folder, and a real
PostgreSQL + a real S3-compatible server (SeaweedFS), started once per test session on loopback.

    def test_something(backend: Backend, tmp_path: Path) -> None:
        config = CoordinatorConfig(data_dir=tmp_path, database=backend.database, blobs=backend.blobs)

`backend` runs a test once per backend, each time on a fresh database and a fresh bucket prefix. Where
PostgreSQL or SeaweedFS can't start here, the scale run skips with the reason; SQLite always runs.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from benchmarks.servers import PostgresServer, S3Server

__all__ = ["BUCKET", "SCALE", "Backend", "backend", "postgres_server", "s3_server"]

SCALE = "postgresql+s3"
BUCKET = "commonweights-tests"


@dataclass(frozen=True)
class Backend:
    name: str
    database: str = ""  # "" for SQLite in the data dir
    blobs: str = ""  # "" for the data dir's folder
    postgres: PostgresServer | None = None

    def another(self) -> Backend:
        """The same kind of backend, empty (for a test that compares two runs); SQLite's lives in the
        data dir, so a fresh data dir is a fresh SQLite backend."""
        if self.postgres is None:
            return self
        return Backend(
            self.name, self.postgres.create_database(), f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}", self.postgres
        )

    @property
    def scale(self) -> bool:
        return self.name == SCALE

    def serve_args(self) -> list[str]:
        """What `coordinator serve` is given for this backend (the S3 endpoint is in the environment)."""
        return ["--database", self.database, "--blobs", self.blobs] if self.scale else []


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    reason = PostgresServer.unavailable()
    if reason:
        pytest.skip(reason)
    with PostgresServer.start() as server:
        yield server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    reason = S3Server.unavailable()
    if reason:
        pytest.skip(reason)
    with S3Server.start() as server:
        # Coordinators in this process and the ones tests start as processes read the endpoint here.
        saved = {name: os.environ.get(name) for name in server.environment()}
        os.environ.update(server.environment())
        yield server
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(params=["sqlite", SCALE])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite")
    postgres: PostgresServer = request.getfixturevalue("postgres_server")
    request.getfixturevalue("s3_server")
    return Backend(SCALE, postgres=postgres).another()
