"""`commonweights coordinator serve` refuses what it can't run on before it opens anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from commonweights.cli import main


def test_serve_refuses_database_and_blob_urls_of_unknown_kinds_naming_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "cw"
    code = main(
        [
            "coordinator",
            "serve",
            "--data-dir",
            str(data_dir),
            "--database",
            "mysql://cw:hunter2@db/cw",
            "--blobs",
            "gs://b/p",
        ]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "--database mysql://…: give a postgresql://" in error
    assert "--blobs gs://…: give an s3://BUCKET/PREFIX" in error
    assert "hunter2" not in error  # a URL is named by its kind only: the rest may hold a password
    assert not data_dir.exists()  # nothing was opened or written


def test_serve_refuses_an_s3_url_without_a_bucket(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["coordinator", "serve", "--data-dir", str(tmp_path / "cw"), "--blobs", "s3://"]) == 2
    assert "names no bucket" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "complaint"),
    [
        (["--replica-url", "http://10.0.0.2:8470"], "--replica-url needs --database postgresql://… and --blobs s3://…"),
        (
            ["--replica-url", "10.0.0.2:8470", "--database", "postgresql://cw@db/cw", "--blobs", "s3://b/p"],
            "--replica-url wants http://HOST:PORT",
        ),
        (["--lease-ttl", "0.1"], "--lease-ttl must be within 1 and 600 s"),
    ],
)
def test_serve_refuses_a_replica_without_shared_state_or_with_a_bad_address(
    extra: list[str], complaint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "cw"
    assert main(["coordinator", "serve", "--data-dir", str(data_dir), *extra]) == 2
    assert complaint in capsys.readouterr().err
    assert not data_dir.exists()
