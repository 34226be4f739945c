"""The whole system as users run it: a coordinator process and volunteer processes on loopback.

Misbehaving volunteers are real volunteer processes with a (hidden) fault switch; crashes are real
signals. Every wait is a bounded poll of the REST API, the database or a log file.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.local import LocalCoordinator, free_port, start_coordinator, stop
from coordinator.store import Store, open_store
from tests.support.backends import Backend
from tests.support.history import check_history

pytestmark = pytest.mark.slow

HEARTBEAT_S = 1.0


def campaign_spec(name: str, **rounds: Any) -> dict[str, Any]:
    return {
        "name": name,
        "dataset": "small",
        "model": "tiny",
        "codec": "int8",
        "token_budget": 10_000_000,
        "inner": {"steps": 3, "batch_size": 2, "seq_len": 32, "warmup_steps": 0},
        "rounds": {"units_per_round": 2, "min_accepted": 2, "lease_s": 6, "deadline_s": 120, **rounds},
        "validation": {"replication_rate": 0.0, "holdout_check_rate": 0.0},
    }


def poll(condition: Callable[[], Any], *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Volunteers:
    """Starts volunteer processes with their own homes and logs; stops them all at the end."""

    def __init__(self, root: Path, coordinator: LocalCoordinator) -> None:
        self.root = root
        self.coordinator = coordinator
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        home = self.root / name
        home.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "commonweights", "volunteer", "run", "--coordinator", self.coordinator.ws_url,
            "--name", name, "--threads", "1", "--config-dir", str(home / "config"), "--cache-dir",
            str(home / "cache"), "--data-dir", str(home / "data"), *extra,
        ]  # fmt: skip
        log = (home / "log.txt").open("ab")
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.root / name / "log.txt").read_text(errors="replace")

    def stop_all(self) -> None:
        for process in self.processes.values():
            stop(process, grace=15)


@pytest.fixture
def system(tmp_path: Path, small_dataset: Path, backend: Backend) -> Iterator[tuple[LocalCoordinator, Volunteers]]:
    coordinator = start_coordinator(
        tmp_path / "coordinator",
        datasets={"small": small_dataset},
        log=tmp_path / "coordinator.log",
        extra_args=["--heartbeat-interval", str(HEARTBEAT_S), *backend.serve_args()],
    )
    volunteers = Volunteers(tmp_path / "volunteers", coordinator)
    try:
        yield coordinator, volunteers
    finally:
        volunteers.stop_all()
        stop(coordinator.process)


def post(coordinator: LocalCoordinator, spec: dict[str, Any]) -> int:
    campaign_id: int = coordinator.api.post_campaign(spec)["id"]
    return campaign_id


def campaign(coordinator: LocalCoordinator, campaign_id: int) -> dict[str, Any]:
    return coordinator.api.campaign(campaign_id)


def test_bad_volunteers_are_rejected_with_the_right_reason_while_training_goes_on(
    system: tuple[LocalCoordinator, Volunteers],
) -> None:
    coordinator, volunteers = system
    campaign_id = post(coordinator, campaign_spec("faults", units_per_round=6, min_accepted=6))
    volunteers.start("honest-1")
    volunteers.start("honest-2")
    # A cohort of accepted updates first, so norm and direction checks have something to compare with;
    # then the honest volunteers step aside so the bad ones' updates arrive while their round is open
    # (tiny rounds close in a second, and a late update would only be rejected as stale).
    poll(lambda: campaign(coordinator, campaign_id)["version"] >= 2, timeout=180, what="two honest rounds")
    for name in ("honest-1", "honest-2"):
        stop(volunteers.processes[name], grace=30)
    faults = {"nan": "non_finite", "shape": "shape_mismatch", "norm100": "norm_outlier"}
    for fault in [*faults, "replay"]:
        volunteers.start(f"bad-{fault}", "--inject-fault", fault, "--max-units", "1")
    for fault in [*faults, "replay"]:
        process = volunteers.processes[f"bad-{fault}"]
        poll(lambda p=process: p.poll() is not None, timeout=180, what=f"the {fault} volunteer to finish")

    rejections = campaign(coordinator, campaign_id)["rejections"]
    for fault, code in faults.items():
        assert rejections.get(code, 0) >= 1, (fault, rejections, volunteers.log(f"bad-{fault}"))
        assert code in volunteers.log(f"bad-{fault}"), f"the {fault} volunteer was not told why"
    by_name = {v["name"]: v for v in coordinator.api.volunteers()}
    for fault in faults:
        assert by_name[f"bad-{fault}"]["units_accepted"] == 0 and by_name[f"bad-{fault}"]["units_rejected"] >= 1
    # The replayed submission changed nothing: one accepted unit, credited once, and told "duplicate".
    replay = by_name["bad-replay"]
    assert replay["units_accepted"] == 1 and replay["units_rejected"] == 0
    assert "duplicate" in volunteers.log("bad-replay")
    # And training goes on.
    version = campaign(coordinator, campaign_id)["version"]
    volunteers.start("honest-1")
    volunteers.start("honest-2")
    poll(lambda: campaign(coordinator, campaign_id)["version"] >= version + 2, timeout=180, what="two more rounds")


def test_a_volunteer_killed_mid_unit_has_its_unit_issued_again_after_the_lease_expires(
    system: tuple[LocalCoordinator, Volunteers], backend: Backend
) -> None:
    coordinator, volunteers = system
    spec = campaign_spec("kill", units_per_round=1, min_accepted=1)
    spec["inner"]["steps"] = 400  # long enough to be killed in the middle
    campaign_id = post(coordinator, spec)
    doomed = volunteers.start("doomed")
    poll(lambda: re.search(r"step \d+/400", volunteers.log("doomed")), timeout=120, what="training to start")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=10)
    killed_at = time.monotonic()
    record = open_store(backend.database, coordinator.data_dir, clock=time.time)  # read beside the coordinator
    (unit_id,) = [unit.id for unit in record.units(campaign_id, ("leased",))]

    volunteers.start("rescuer")

    def reissued() -> bool:
        unit = record.unit(unit_id)
        return unit is not None and unit.attempts >= 2

    poll(reissued, timeout=60, what="the unit to be leased again")
    assert time.monotonic() - killed_at >= 6 - 1, "the unit was issued again before its lease ran out"

    # A unit held by a volunteer not yet trusted doesn't hold up its round: the rescuer may train a
    # fresh unit first, and the killed one's slice goes out again in the next round. Either way the
    # rescuer trains it in the end.
    def trained_by() -> list[str]:
        volunteers_of = (record.volunteer(s.volunteer_id) for s in record.submissions_for_unit(unit_id))
        return [v.name for v in volunteers_of if v is not None]

    poll(trained_by, timeout=300, what="the rescued unit's submission")
    assert trained_by() == ["rescuer"]
    record.close()


def test_a_coordinator_killed_with_sigkill_and_restarted_loses_no_acknowledged_update_and_applies_none_twice(
    tmp_path: Path, small_dataset: Path, backend: Backend
) -> None:
    data_dir = tmp_path / "coordinator"
    port = free_port()

    def launch() -> LocalCoordinator:
        return start_coordinator(
            data_dir,
            datasets={"small": small_dataset},
            port=port,
            log=tmp_path / "coordinator.log",
            extra_args=["--heartbeat-interval", str(HEARTBEAT_S), *backend.serve_args()],
        )

    coordinator = launch()
    record = open_store(backend.database, data_dir, clock=time.time)  # read beside the coordinator
    spec = campaign_spec("crash", lease_s=30)
    spec["token_budget"] = 8 * 2 * 3 * 2 * 32  # eight rounds of two units
    campaign_id = post(coordinator, spec)
    volunteers = Volunteers(tmp_path / "volunteers", coordinator)
    try:
        volunteers.start("a")
        volunteers.start("b")
        for kill in range(3):
            accepted_before = _accepted(record, campaign_id)
            # Kill right after some update was acknowledged, mid-round, at a different point each time.
            poll(
                lambda n=accepted_before + 1 + kill: _accepted(record, campaign_id) >= n,
                timeout=180,
                what="more accepted updates",
            )
            coordinator.process.send_signal(signal.SIGKILL)
            coordinator.process.wait(timeout=10)
            coordinator = launch()
        poll(
            lambda: campaign(coordinator, campaign_id)["status"] == "finished",
            timeout=300,
            what="the campaign to finish",
        )
    finally:
        volunteers.stop_all()
        stop(coordinator.process)

    assert check_history(data_dir, campaign_id, database=backend.database, blobs_url=backend.blobs) == 9
    recorded = {s.unit_id for s in record.submissions(statuses=("accepted",), campaign_id=campaign_id, limit=1 << 40)}
    record.close()
    acked = {m for name in ("a", "b") for m in re.findall(r"unit ([0-9a-f]{32}): accepted", volunteers.log(name))}
    assert acked, "the volunteers logged no acknowledgements"
    assert acked <= recorded, f"acknowledged but lost: {acked - recorded}"


def _accepted(record: Store, campaign_id: int) -> int:
    return record.submission_counts(campaign_id).get("accepted", 0)
