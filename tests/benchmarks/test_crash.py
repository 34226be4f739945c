"""`commonweights bench crash` at a tiny scale: real kills of a real coordinator, the record audited
with nothing lost or counted twice, a volunteer replaced mid-run, and the sections in the report; and
the audit itself noticing an update counted twice (the figures are the benchmark's own table)."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest

from benchmarks.crash import acks_in
from benchmarks.history import audit_history
from commonweights.cli import main
from tests.integration.test_history_checker import run_rounds


def test_acks_are_read_from_a_volunteer_log_with_the_identity_that_received_them() -> None:
    first, second = "a" * 32, "b" * 32
    log = "\n".join([
        "registered as 1111 (coordinator 0.1.0, credit 0)",
        f"unit {first}: accepted: accepted [credit 0.001]",
        f"unit {'c' * 32}: rejected (lease_expired): the lease on this unit has ended [credit 0]",
        "note: the coordinator doesn't know our token; registering again",
        "registered as 2222 (coordinator 0.1.0, credit 0)",
        f"unit {second}: accepted: accepted [credit 0.001]",
    ])  # fmt: skip
    assert acks_in(log) == ([("1111", first), ("2222", second)], 1)


def test_the_audit_counts_an_update_applied_twice_that_the_replay_also_catches(
    tmp_path: Path, small_dataset: Path
) -> None:
    campaign_id = run_rounds(tmp_path, small_dataset, rounds=2)
    clean = audit_history(tmp_path, campaign_id)
    assert clean.consistent and clean.versions == 3 and clean.applied == clean.accepted == 4

    db = sqlite3.connect(tmp_path / "coordinator.sqlite3")
    # Round 1's first update counted again in round 2, as a double apply would record it (under another
    # volunteer's name: the schema itself refuses a second submission of one volunteer for one unit).
    db.execute(
        "INSERT INTO submissions (unit_id, volunteer_id, update_sha, update_size, status, code, message, round_id, "
        "staleness, weight, norm, tokens, seconds, losses_json, credit, applied, created_at) "
        "SELECT unit_id, volunteer_id || '-again', update_sha, update_size, status, code, message, round_id + 1, "
        "staleness, weight, norm, tokens, seconds, losses_json, credit, applied, created_at FROM submissions "
        "ORDER BY id LIMIT 1"
    )
    db.commit()
    db.close()
    tampered = audit_history(tmp_path, campaign_id)
    assert not tampered.consistent
    assert tampered.replay_error is not None and "updates on record" in tampered.replay_error
    assert (tampered.extra_by_unit, tampered.extra_by_update, tampered.applied_minus_published) == (1, 1, 1)
    assert tampered.applied_twice == 1


@pytest.mark.slow
def test_bench_crash_kills_restarts_audits_and_writes_its_sections(tmp_path: Path, small_dataset: Path) -> None:
    out, raw = tmp_path / "benchmarks.md", tmp_path / "bench.json"
    out.write_text("# Benchmarks\n\nkept\n")
    code = main([
        "bench", "crash", "--kills", "2", "--volunteers", "2", "--churn-volunteers", "2", "--churn-rounds", "2",
        "--churn-fraction", "0.5", "--seed", "1", "--dataset", str(small_dataset), "--output", str(out),
        "--json", str(raw),
    ])  # fmt: skip
    assert code == 0
    results = json.loads(raw.read_text())
    crash = results["crash"]
    assert crash["kills"] == 2 and sum(crash["by_phase"].values()) == 2
    assert crash["acks"] > 0 and crash["acks_lost"] == []
    assert crash["audit"]["replay_error"] is None and crash["applied_twice"] == 0
    assert crash["audit"]["versions"] >= 3 and crash["versions_after_last_kill"] == 2
    assert len(crash["restart_s"]) >= 1
    calm, churned = results["churn"]["calm"], results["churn"]["churned"]
    assert calm["killed"] == [] and len(churned["killed"]) == 1
    assert calm["versions"] == churned["versions"] == 2
    assert math.isfinite(calm["final_loss"]) and math.isfinite(churned["final_loss"])
    text = out.read_text()
    assert "kept" in text and text.count("<!-- bench:crash -->") == text.count("<!-- bench:churn -->") == 1
    for row in ("coordinator SIGKILLs", "acknowledged updates lost", "updates applied twice", "Churned vs calm"):
        assert row in text
