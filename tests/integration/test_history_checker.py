"""The history checker itself: it passes a real history and catches a tampered one."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.service import Coordinator, CoordinatorConfig
from tests.coordinator.test_runtime import Clock, make_spec, submit_honest, volunteers
from tests.support.backends import Backend
from tests.support.history import check_history


def run_rounds(data_dir: Path, dataset: Path, rounds: int, backend: Backend | None = None) -> int:
    backend = backend or Backend("sqlite")
    config = CoordinatorConfig(
        data_dir=data_dir, database=backend.database, blobs=backend.blobs, datasets={"small": dataset}
    )
    service = Coordinator.open(config, clock=Clock())
    campaign_id = service.create_campaign(make_spec(), owner="admin:1")
    vols = volunteers(service, 2)
    for _ in range(rounds):
        for v in vols:
            submit_honest(service, v)
    service.close()
    return campaign_id


def test_a_real_history_replays_to_the_published_versions(
    tmp_path: Path, small_dataset: Path, backend: Backend
) -> None:
    campaign_id = run_rounds(tmp_path, small_dataset, rounds=3, backend=backend)
    assert check_history(tmp_path, campaign_id, database=backend.database, blobs_url=backend.blobs) == 4


def test_an_update_counted_twice_is_caught(tmp_path: Path, small_dataset: Path) -> None:
    campaign_id = run_rounds(tmp_path, small_dataset, rounds=2)
    import sqlite3

    db = sqlite3.connect(tmp_path / "coordinator.sqlite3")
    # Move round 1's first accepted update into round 2 as well, as a double-apply would.
    db.execute(
        "INSERT INTO submissions (unit_id, volunteer_id, update_sha, update_size, status, code, message, round_id, "
        "staleness, weight, norm, tokens, seconds, losses_json, credit, applied, created_at) "
        "SELECT unit_id, volunteer_id || '-again', update_sha, update_size, status, code, message, round_id + 1, "
        "staleness, weight, norm, tokens, seconds, losses_json, credit, applied, created_at FROM submissions "
        "ORDER BY id LIMIT 1"
    )
    db.commit()
    db.close()
    with pytest.raises(AssertionError, match="updates on record"):
        check_history(tmp_path, campaign_id)
