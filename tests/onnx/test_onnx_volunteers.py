"""Volunteers that train with ONNX Runtime, as users run them: a coordinator process builds the
campaign's step graph and serves it, and `commonweights volunteer run --runtime onnxruntime` trains
units with it next to a PyTorch volunteer; each checks the other's units as replicas.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.local import LocalCoordinator, start_coordinator, stop
from coordinator.store.blobs import BlobStore
from tests.support.live import poll

pytestmark = pytest.mark.slow


@pytest.fixture
def coordinator(tmp_path: Path, small_dataset: Path) -> Iterator[LocalCoordinator]:
    local = start_coordinator(
        tmp_path / "coordinator",
        datasets={"small": small_dataset},
        log=tmp_path / "coordinator.log",
        log_level="info",
        extra_args=["--heartbeat-interval", "1"],
    )
    try:
        yield local
    finally:
        stop(local.process)


def volunteer(root: Path, coordinator: LocalCoordinator, name: str, *extra: str) -> subprocess.Popen[bytes]:
    home = root / name
    home.mkdir(parents=True)
    command = [
        sys.executable, "-m", "commonweights", "volunteer", "run", "--coordinator", coordinator.ws_url, "--name", name,
        "--threads", "1", "--config-dir", str(home / "config"), "--cache-dir", str(home / "cache"), *extra,
    ]  # fmt: skip
    log = (home / "log.txt").open("ab")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_an_onnx_runtime_volunteer_trains_with_the_served_graph_and_its_replicas_agree_with_torch(
    tmp_path: Path, coordinator: LocalCoordinator
) -> None:
    spec = {
        "name": "onnx",
        "dataset": "small",
        "model": "tiny",
        "codec": "int8",
        "token_budget": 10_000_000,
        "inner": {"steps": 3, "batch_size": 2, "seq_len": 32, "warmup_steps": 0},
        "rounds": {"units_per_round": 2, "min_accepted": 2, "lease_s": 30, "deadline_s": 600},
        # Every unit of a volunteer not yet trusted is computed twice: by the other runtime, here.
        "validation": {"replication_rate": 1.0},
    }
    campaign_id = coordinator.api.post_campaign(spec)["id"]
    processes = [
        # Different /24s of loopback: a replica goes only to a volunteer on another network than its twin's.
        # Both also evaluate: ONNX Runtime's loss graph and PyTorch measure new versions side by side.
        volunteer(
            tmp_path,
            coordinator,
            "ort",
            "--runtime",
            "onnxruntime",
            "--bind-address",
            "127.0.1.1",
            "--unit-kinds",
            "train,evaluate",
        ),
        volunteer(
            tmp_path,
            coordinator,
            "pt",
            "--runtime",
            "torch",
            "--bind-address",
            "127.0.2.1",
            "--unit-kinds",
            "train,evaluate",
        ),
    ]
    db = sqlite3.connect(f"file:{coordinator.data_dir / 'coordinator.sqlite3'}?mode=ro", uri=True)
    try:
        # The first request from the ONNX volunteer starts the graph build (a minute or two here).
        poll("the step graph", lambda: db.execute("SELECT 1 FROM graphs").fetchone(), timeout=400)
        (graph_sha, graph_size) = db.execute("SELECT sha256, size FROM graphs").fetchone()
        assert BlobStore(coordinator.data_dir / "blobs").size(graph_sha) == graph_size > 100_000

        def pairs() -> list[tuple[str, str]]:
            """(volunteer, twin's volunteer) of accepted submissions whose unit was replicated."""
            rows = db.execute(
                """SELECT va.name, vb.name FROM units u
                   JOIN submissions a ON a.unit_id = u.id JOIN volunteers va ON va.id = a.volunteer_id
                   JOIN submissions b ON b.unit_id = u.replica_of JOIN volunteers vb ON vb.id = b.volunteer_id
                   WHERE u.replica_of IS NOT NULL AND a.status = 'accepted' AND b.status = 'accepted'"""
            ).fetchall()
            return [(str(x), str(y)) for x, y in rows]

        poll("agreed replicas", lambda: {"ort", "pt"} <= {name for pair in pairs() for name in pair}, timeout=400)
        assert all(x != y for x, y in pairs()), "each replica was computed by the other runtime"
        poll("two versions", lambda: coordinator.api.campaign(campaign_id)["version"] >= 2, timeout=300)
        log = tmp_path / "coordinator.log"
        poll("a version's holdout loss settled by the two", lambda: "settled by two" in log.read_text(), timeout=300)
    finally:
        for process in processes:
            stop(process, grace=15)
        db.close()
    volunteers = {v["name"]: v for v in coordinator.api.volunteers()}
    assert volunteers["ort"]["units_accepted"] >= 1 and volunteers["ort"]["units_rejected"] == 0
    (capabilities,) = db_capabilities(coordinator, "ort")
    assert capabilities["runtimes"] == ["onnxruntime"]


def db_capabilities(coordinator: LocalCoordinator, name: str) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{coordinator.data_dir / 'coordinator.sqlite3'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT capabilities_json FROM volunteers WHERE name = ?", (name,)).fetchall()
    return [json.loads(row[0]) for row in rows]
