"""Robust aggregation as a campaign option (`outer.aggregation`), driven in-process with real training
and real SQLite: rounds close and publish with a trimmed mean or centered clipping, a liar the
validators missed moves the model far less than it moves the mean, a restart mid-round reaches the
same version, and the history replay applies the campaign's own rule."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest
import torch

from coordinator.service import Coordinator, CoordinatorConfig
from coordinator.validation import ValidationPipeline
from tests.coordinator.test_runtime import Clock, lease, make_spec, submit_honest, volunteers
from tests.support.history import HistoryError, check_history
from tests.support.inprocess_volunteer import payload, train
from training.checkpoint import load_state, load_weights

# Rounds of three: a trim of 0.34 cuts one update from each end, and centered clipping can outvote one.
ROBUST: dict[str, dict[str, object]] = {
    "trimmed_mean": {"aggregation": "trimmed_mean", "trim": 0.34},
    "centered_clip": {"aggregation": "centered_clip"},
}
ROUNDS_OF_THREE = {"units_per_round": 3, "min_accepted": 3, "lease_s": 60, "deadline_s": 600}
# No update measured by the evidence check where validation isn't the subject: its forward passes
# are most of what a submit costs.
UNMEASURED = {"replication_rate": 0.0, "holdout_check_rate": 0.0}


@pytest.fixture
def service(tmp_path: Path, small_dataset: Path) -> Coordinator:
    config = CoordinatorConfig(data_dir=tmp_path / "coordinator", datasets={"small": small_dataset})
    coordinator = Coordinator.open(config, clock=Clock())
    coordinator.version_listeners.clear()
    return coordinator


def _weights(service: Coordinator, campaign_id: int, version: int) -> dict[str, torch.Tensor]:
    """The version's exact weights: what the rule applied (the published checkpoint is their int8 delta's
    rebuild), the checkpoint itself for version 0."""
    row = service.store.version(campaign_id, version)
    assert row is not None
    master = load_state(service.blobs.get(row.state_sha)).get("master")
    return master if master else load_weights(service.blobs.get(row.checkpoint_sha))


def _norm(tensors: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().square().sum()) for t in tensors.values()))


def _stack_files(service: Coordinator) -> list[Path]:
    return sorted((service.config.data_dir / "aggregation").rglob("update-stack-*"))


@pytest.mark.parametrize("rule", sorted(ROBUST))
def test_a_robust_campaign_closes_rounds_and_publishes_versions(service: Coordinator, rule: str) -> None:
    spec = make_spec(outer={"optimizer": "nesterov", **ROBUST[rule]}, rounds=ROUNDS_OF_THREE)
    campaign_id = service.create_campaign(spec, owner="admin:1")
    vols = volunteers(service, 3)
    for _ in range(2):
        for v in vols:
            assert submit_honest(service, v)[1] == "accepted"
    campaign = service.store.campaign(campaign_id)
    assert campaign is not None and campaign.current_version == 2
    versions = service.store.versions(campaign_id)
    assert [v.updates for v in versions[1:]] == [3, 3]
    v0, v1, v2 = (_weights(service, campaign_id, n) for n in range(3))
    assert any(not torch.equal(v0[n], v1[n]) for n in v0) and any(not torch.equal(v1[n], v2[n]) for n in v0)
    assert all(torch.isfinite(t).all() for t in v2.values())
    assert (service.config.data_dir / "aggregation" / f"campaign-{campaign_id}").is_dir(), "the rule used a stack"
    assert _stack_files(service) == [], "a closed round's stack files are removed"


def _round_with_a_liar(
    service: Coordinator, rule: str
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """One round of 5 updates, the third a sign-flipped honest update ×1000 that validation let through.
    Returns the round's aggregate as applied (θ_0 − θ_1: outer `average` with lr 1) and the honest updates."""
    outer: dict[str, object] = {"optimizer": "average", "lr": 1.0, "aggregation": rule}
    spec = make_spec(
        name=f"liar-{rule}",
        codec="fp32",
        outer=outer,
        rounds={"units_per_round": 5, "min_accepted": 5, "lease_s": 60, "deadline_s": 600},
        validation=UNMEASURED,
    )
    campaign_id = service.create_campaign(spec, owner="admin:1")
    runtime = service.runtimes[campaign_id]
    # A liar the validators missed: this test is about what aggregation does with it.
    runtime.state.pipeline = ValidationPipeline(())
    honest = []
    for i, v in enumerate(volunteers(service, 5)):
        unit = lease(service, v)
        delta, report = train(service, unit)
        if i == 2:
            delta = {n: t * -1000.0 for n, t in delta.items()}
        else:
            honest.append(delta)
        outcome = runtime.submit(v, unit.unit.id, unit.lease_id, payload(service, unit, delta), report)
        assert outcome.status == "accepted", outcome.message
    assert service.store.campaign(campaign_id).current_version == 1  # type: ignore[union-attr]
    service.set_status(campaign_id, "paused")  # the next campaign's units, not this one's
    v0, v1 = _weights(service, campaign_id, 0), _weights(service, campaign_id, 1)
    return {n: v0[n] - v1[n] for n in v0}, honest


def test_a_huge_liar_moves_a_robust_campaign_far_less_than_the_mean(service: Coordinator) -> None:
    applied = {}
    for rule in ("mean", "trimmed_mean", "centered_clip"):
        applied[rule], honest = _round_with_a_liar(service, rule)
    honest_norm = max(_norm(d) for d in honest)
    # The mean takes a fifth of the liar's ×1000: about 200 honest updates' worth.
    assert _norm(applied["mean"]) > 100 * honest_norm
    for rule in ("trimmed_mean", "centered_clip"):
        ratio = _norm(applied[rule]) / _norm(applied["mean"])
        assert ratio < 0.01, (rule, ratio)
        assert _norm(applied[rule]) < 2 * honest_norm, rule
    # The trimmed mean keeps every coordinate inside the honest updates' range (one liar, one cut per end).
    for name, value in applied["trimmed_mean"].items():
        stacked = torch.stack([d[name] for d in honest])
        low, high = stacked.min(dim=0).values, stacked.max(dim=0).values
        assert bool((value >= low - 1e-5).all() and (value <= high + 1e-5).all()), name


@pytest.mark.parametrize("rule", sorted(ROBUST))
def test_restart_mid_round_reaches_the_same_robust_version(tmp_path: Path, small_dataset: Path, rule: str) -> None:
    """Two of three updates, a new Coordinator on the same data dir (with a stack file a killed
    process left behind), the third: the same θ_1 as without the restart."""

    def run(data_dir: Path, restart: bool) -> dict[str, torch.Tensor]:
        config = CoordinatorConfig(data_dir=data_dir, datasets={"small": small_dataset})
        service = Coordinator.open(config, clock=Clock())
        spec = make_spec(outer={"optimizer": "nesterov", **ROBUST[rule]}, rounds=ROUNDS_OF_THREE, validation=UNMEASURED)
        campaign_id = service.create_campaign(spec, owner="admin:1")
        a, b, c = volunteers(service, 3)
        submit_honest(service, a)
        submit_honest(service, b)
        if restart:
            service.close()
            stale = data_dir / "aggregation" / f"campaign-{campaign_id}" / "update-stack-killed.f32"
            stale.parent.mkdir(parents=True, exist_ok=True)
            stale.write_bytes(b"\0" * 64)
            service = Coordinator.open(config, clock=Clock())
            assert not stale.exists(), "a stale stack file is swept at start"
            current = service.runtimes[campaign_id].round
            assert current is not None and current.accepted == 2
        submit_honest(service, c)
        version = service.store.version(campaign_id, 1)
        assert version is not None and version.updates == 3
        weights = load_weights(service.blobs.get(version.checkpoint_sha))
        service.close()
        return weights

    straight = run(tmp_path / "straight", restart=False)
    restarted = run(tmp_path / "restarted", restart=True)
    for name in straight:
        assert torch.equal(straight[name], restarted[name]), name


@pytest.mark.parametrize(
    ("outer", "shards"),
    [
        (ROBUST["trimmed_mean"], 2),
        # A radius well inside the honest updates' spread: clipped, the three differ from their mean.
        ({"aggregation": "centered_clip", "clip_tau": 1e-3}, 1),
    ],
    ids=["trimmed_mean-sharded", "centered_clip-tau"],
)
def test_the_history_replay_applies_the_campaigns_robust_rule(
    tmp_path: Path, small_dataset: Path, outer: dict[str, object], shards: int
) -> None:
    """Sharded, each shard's updates are aggregated apart: three per shard in a round of six."""
    config = CoordinatorConfig(data_dir=tmp_path, datasets={"small": small_dataset})
    service = Coordinator.open(config, clock=Clock())
    per_round = 3 * shards
    spec = make_spec(
        outer={"optimizer": "nesterov", **outer},
        rounds={**ROUNDS_OF_THREE, "units_per_round": per_round, "min_accepted": per_round},
        shard_plan="full" if shards == 1 else f"groups:{shards}",
        validation=UNMEASURED,
    )
    campaign_id = service.create_campaign(spec, owner="admin:1")
    vols = volunteers(service, per_round)
    for _ in range(2):
        for v in vols:
            submit_honest(service, v)
    service.close()
    assert check_history(tmp_path, campaign_id) == 3
    # The same record read as a mean campaign's no longer replays: the rule is what the replay applied.
    db = sqlite3.connect(tmp_path / "coordinator.sqlite3")
    (text,) = db.execute("SELECT spec_json FROM campaigns WHERE id = ?", (campaign_id,)).fetchone()
    as_mean = json.loads(text)
    as_mean["outer"]["aggregation"] = "mean"
    db.execute("UPDATE campaigns SET spec_json = ? WHERE id = ?", (json.dumps(as_mean), campaign_id))
    db.commit()
    db.close()
    with pytest.raises(HistoryError, match="the replay differs from the published"):
        check_history(tmp_path, campaign_id)
