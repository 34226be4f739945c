"""The REST API against a real aiohttp server on loopback, with a real store and a small dataset."""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from safetensors.torch import load as load_safetensors

from coordinator.app import create_app
from coordinator.appkeys import SERVICE
from coordinator.engine import Assignment
from coordinator.openapi import build_document
from coordinator.rest import ROUTES
from coordinator.service import Coordinator, CoordinatorConfig
from tests.support.backends import Backend
from tests.support.inprocess_volunteer import payload, train
from training.privacy_accounting import gaussian_epsilon, releases_within

SPEC: dict[str, Any] = {
    "name": "rest-test",
    "dataset": "small",
    "model": "tiny",
    "token_budget": 100_000,
    "inner": {"steps": 2, "batch_size": 2, "seq_len": 32, "warmup_steps": 0},
    "rounds": {"units_per_round": 2, "min_accepted": 2},
    "validation": {"replication_rate": 0.0},
}


class Api:
    """A client that speaks JSON and remembers the admin token."""

    def __init__(self, client: TestClient[Any, Any], admin: str) -> None:
        self.client = client
        self.admin = admin

    @property
    def service(self) -> Coordinator:
        app = self.client.app
        assert app is not None
        service: Coordinator = app[SERVICE]
        return service

    async def call(
        self, method: str, path: str, *, token: str | None = None, body: object = None, raw: bytes | None = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        async with self.client.request(method, path, headers=headers, data=data) as response:
            text = await response.text()
            is_json = response.content_type == "application/json"
            return response.status, json.loads(text) if is_json else text

    async def lead(self, label: str = "alice") -> tuple[int, str]:
        status, body = await self.call("POST", "/api/tokens", token=self.admin, body={"label": label, "role": "lead"})
        assert status == 201, body
        return int(body["id"]), str(body["token"])

    async def campaign(self, token: str, **changes: Any) -> dict[str, Any]:
        status, body = await self.call("POST", "/api/campaigns", token=token, body={**SPEC, **changes})
        assert status == 201, body
        return dict(body)


@pytest.fixture
async def api(tmp_path: Path, small_dataset: Path) -> AsyncIterator[Api]:
    app = create_app(CoordinatorConfig(data_dir=tmp_path / "data", datasets={"small": small_dataset}))
    async with TestClient(TestServer(app)) as client:
        yield Api(client, (tmp_path / "data" / "admin_token").read_text().strip())


@pytest.fixture
async def api_on(tmp_path: Path, small_dataset: Path, backend: Backend) -> AsyncIterator[Api]:
    """`api` on each backend: SQLite, and PostgreSQL + S3."""
    config = CoordinatorConfig(
        data_dir=tmp_path / "data", database=backend.database, blobs=backend.blobs, datasets={"small": small_dataset}
    )
    async with TestClient(TestServer(create_app(config))) as client:
        yield Api(client, (tmp_path / "data" / "admin_token").read_text().strip())


def _concrete(path: str) -> str:
    return (
        path.replace("{campaign_id}", "1")
        .replace("{token_id}", "1")
        .replace("{volunteer_id}", "v1")
        .replace("{team_id}", "1")
    )


async def test_anonymous_callers_get_401_from_every_operation_the_document_says_needs_a_token(api: Api) -> None:
    document = build_document(ROUTES)
    guarded = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if operation["security"]:
                status, body = await api.call(method.upper(), _concrete(path), body={})
                assert status == 401, (method, path, body)
                assert body["error"]["code"] == "unauthorized"
                guarded.append(operation["operationId"])
    assert set(guarded) == {
        "create_campaign",
        "pause_campaign",
        "resume_campaign",
        "stop_campaign",
        "list_datasets",
        "me",
        "server_health",
        "list_tokens",
        "create_token",
        "revoke_token",
        "ban_volunteer",
        "unban_volunteer",
        "get_account",
        "rename_account",
        "new_account_key",
        "new_link_code",
        "pause_machine",
        "resume_machine",
        "unlink_machine",
        "join_team",
        "link_machine",
        "my_machine",
        "create_team",
    }


async def test_a_lead_gets_403_from_admin_operations(api: Api) -> None:
    _, lead = await api.lead()
    for route in ROUTES:
        if route.roles == ("admin",):
            status, body = await api.call(route.method, _concrete(route.path), token=lead, body={"label": "x"})
            assert status == 403, (route.path, body)
            assert "admin" in body["error"]["message"]


async def test_a_revoked_or_unknown_token_is_refused(api: Api) -> None:
    token_id, lead = await api.lead()
    assert (await api.call("GET", "/api/me", token=lead)) == (200, {"id": token_id, "role": "lead", "label": "alice"})
    status, body = await api.call("DELETE", f"/api/tokens/{token_id}", token=api.admin)
    assert (status, body) == (200, {"id": token_id, "revoked": True})
    assert (await api.call("GET", "/api/me", token=lead))[0] == 401
    assert (await api.call("GET", "/api/me", token="cw-lead-made-up"))[0] == 401
    _, tokens = await api.call("GET", "/api/tokens", token=api.admin)
    assert [t["revoked"] for t in tokens["tokens"]] == [False, True]
    assert all("token" not in t and "token_hash" not in t for t in tokens["tokens"])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "send JSON like"),
        (b'{"role": "lead"}', "label"),
        (b'{"label": 5}', "label"),
        (b'{"label": "x", "role": "root"}', "role must be lead or admin"),
        (b'{"label": "x", "colour": "red"}', "unknown fields colour"),
    ],
)
async def test_a_bad_token_request_gets_400_saying_what_is_wrong(api: Api, raw: bytes, message: str) -> None:
    status, body = await api.call("POST", "/api/tokens", token=api.admin, raw=raw)
    assert status == 400
    assert message in body["error"]["message"]


async def test_a_lead_posts_a_campaign_and_it_is_listed_as_theirs(api: Api) -> None:
    token_id, lead = await api.lead()
    created = await api.campaign(lead)
    assert created["owner"] == f"lead:{token_id}"
    assert (created["status"], created["version"], created["progress"]) == ("active", 0, 0.0)
    _, listed = await api.call("GET", "/api/campaigns")
    assert [c["name"] for c in listed["campaigns"]] == ["rest-test"]
    status, detail = await api.call("GET", f"/api/campaigns/{created['id']}")
    assert status == 200
    assert detail["spec"]["inner"]["steps"] == 2
    assert detail["model_config"]["vocab_size"] == 512
    assert detail["checkpoint"]["version"] == 0
    assert (detail["accepted"], detail["rejected"], detail["volunteers_training"]) == (0, 0, 0)


async def test_a_bad_spec_gets_every_problem_each_tied_to_its_field(api: Api) -> None:
    _, lead = await api.lead()
    bad = {**SPEC, "inner": {"steps": 0, "lr": "fast"}, "rounds": {"units_per_round": 2, "min_accepted": 5}}
    status, body = await api.call("POST", "/api/campaigns", token=lead, body=bad)
    assert status == 400
    error = body["error"]
    assert error["code"] == "invalid_spec"
    fields = {e["field"] for e in error["field_errors"]}
    assert fields == {"inner.lr"}, "type errors are reported first, before range checks"
    bad["inner"] = {"steps": 0}
    _, body = await api.call("POST", "/api/campaigns", token=lead, body=bad)
    messages = {e["field"]: e["message"] for e in body["error"]["field_errors"]}
    assert set(messages) == {"inner.steps", "rounds.min_accepted"}
    assert "must be positive" in messages["inner.steps"]
    assert len(body["error"]["problems"]) == 2


async def test_an_unknown_dataset_and_a_taken_name_point_at_their_fields(api: Api) -> None:
    _, lead = await api.lead()
    status, body = await api.call("POST", "/api/campaigns", token=lead, body={**SPEC, "dataset": "nope"})
    assert status == 400
    assert [e["field"] for e in body["error"]["field_errors"]] == ["dataset"]
    assert "known: small" in body["error"]["message"]
    await api.campaign(lead)
    status, body = await api.call("POST", "/api/campaigns", token=lead, body=SPEC)
    assert status == 409
    assert [e["field"] for e in body["error"]["field_errors"]] == ["name"]


async def test_a_dataset_is_named_from_the_admins_list_never_reached_by_path(
    api: Api, small_dataset: Path, tmp_path: Path
) -> None:
    # A prepared dataset the admin never served, on the same machine, and one under the data dir.
    elsewhere = tmp_path / "private"
    shutil.copytree(small_dataset, elsewhere)
    served = tmp_path / "data" / "datasets" / "extra"
    shutil.copytree(small_dataset, served)
    _, lead = await api.lead()
    for n, dataset in enumerate([str(elsewhere), str(small_dataset), "../../private", "datasets/extra", "/"]):
        status, body = await api.call(
            "POST", "/api/campaigns", token=lead, body={**SPEC, "name": f"p{n}", "dataset": dataset}
        )
        assert status == 400, (dataset, body)
        assert [e["field"] for e in body["error"]["field_errors"]] == ["dataset"]
        assert "known: extra, small" in body["error"]["message"]
    assert "never a path" in body["error"]["message"]
    assert (await api.call("GET", "/api/campaigns"))[1]["campaigns"] == []
    assert (await api.campaign(lead, name="by-name", dataset="extra"))["dataset"] == "extra"


async def test_a_dataset_without_holdout_tokens_is_refused_with_what_to_do(api: Api, tmp_path: Path) -> None:
    from training.data import prepare_dataset

    text = tmp_path / "flat.txt"
    text.write_text("".join(f"line {i} of a corpus with no holdout\n" for i in range(3000)))
    prepare_dataset([text], tmp_path / "data" / "datasets" / "flat", tokenizer="bytes", holdout_fraction=0,
                    progress=False)  # fmt: skip
    _, lead = await api.lead()
    status, body = await api.call("POST", "/api/campaigns", token=lead, body={**SPEC, "dataset": "flat"})
    assert status == 400, body
    assert "0 holdout tokens" in body["error"]["message"] and "holdout fraction above 0" in body["error"]["message"]


async def test_a_campaign_pauses_resumes_and_stops_once(api: Api) -> None:
    _, lead = await api.lead()
    campaign = await api.campaign(lead)
    base = f"/api/campaigns/{campaign['id']}"
    assert (await api.call("POST", base + "/pause", token=lead))[1]["status"] == "paused"
    status, body = await api.call("POST", base + "/pause", token=lead)
    assert status == 409 and "is paused" in body["error"]["message"]
    assert (await api.call("POST", base + "/resume", token=lead))[1]["status"] == "active"
    assert (await api.call("POST", base + "/stop", token=api.admin))[1]["status"] == "stopped"
    assert (await api.call("POST", base + "/resume", token=lead))[0] == 409


async def test_a_lead_can_not_steer_another_leads_campaign(api: Api) -> None:
    _, alice = await api.lead("alice")
    _, bob = await api.lead("bob")
    campaign = await api.campaign(alice)
    status, body = await api.call("POST", f"/api/campaigns/{campaign['id']}/pause", token=bob)
    assert status == 403
    assert "owner" in body["error"]["message"]


async def test_an_admin_bans_and_unbans_a_volunteer(api: Api) -> None:
    volunteer, _ = api.service.register_volunteer("mallory", {})
    status, body = await api.call("POST", f"/api/volunteers/{volunteer.id}/ban", token=api.admin)
    assert (status, body) == (200, {"id": volunteer.id, "banned": True})
    _, listed = await api.call("GET", "/api/volunteers")
    assert [(v["name"], v["banned"]) for v in listed["volunteers"]] == [("mallory", True)]
    assert (await api.call("POST", f"/api/volunteers/{volunteer.id}/unban", token=api.admin))[1]["banned"] is False
    assert (await api.call("POST", "/api/volunteers/nobody/ban", token=api.admin))[0] == 404


def _honest_update(service: Coordinator, volunteer_id: str) -> str:
    row = service.store.volunteer(volunteer_id)
    assert row is not None
    unit = service.assign_work(row, memory_bytes=8 << 30)
    assert isinstance(unit, Assignment), unit
    delta, report = train(service, unit)
    runtime = service.runtimes[unit.campaign.id]
    return runtime.submit(volunteer_id, unit.unit.id, unit.lease_id, payload(service, unit, delta), report).status


async def test_after_a_round_the_campaign_reports_throughput_credit_and_the_new_checkpoint(api: Api) -> None:
    _, lead = await api.lead()
    campaign = await api.campaign(lead)
    base = f"/api/campaigns/{campaign['id']}"
    ids = [api.service.register_volunteer(name, {})[0].id for name in ("ada", "grace")]
    assert [_honest_update(api.service, v) for v in ids] == ["accepted", "accepted"]

    _, detail = await api.call("GET", base)
    assert (detail["version"], detail["rounds_closed"], detail["accepted"]) == (1, 1, 2)
    assert detail["tokens_trained"] == 2 * 2 * 2 * 32
    assert detail["tokens_per_second"] > 0
    assert 0 < detail["progress"] < 1
    _, board = await api.call("GET", base + "/leaderboard")
    assert sorted(e["name"] for e in board["leaderboard"]) == ["ada", "grace"]
    assert all(e["credit"] > 0 and e["recent_credit"] > 0 and e["tokens"] == 128 for e in board["leaderboard"])
    assert [e["rank"] for e in board["leaderboard"]] == [1, 2]
    _, rounds = await api.call("GET", base + "/rounds")
    assert [(r["number"], r["status"], r["close_reason"]) for r in rounds["rounds"][:1]] == [(1, "closed", "quorum")]

    async with api.client.get(base + "/checkpoint") as response:
        assert response.status == 200
        weights = await response.read()
        assert response.headers["X-Model-Version"] == "1"
        assert response.headers["X-Checkpoint-Sha256"] == hashlib.sha256(weights).hexdigest()
        assert 'filename="rest-test-v1.safetensors"' in response.headers["Content-Disposition"]
    tensors = load_safetensors(weights)
    assert {name: list(t.shape) for name, t in tensors.items()}["embed.weight"] == [512, 96]
    async with api.client.get(base + "/checkpoint?version=0") as response:
        assert response.headers["X-Model-Version"] == "0"
    assert (await api.call("GET", base + "/checkpoint?version=7"))[0] == 404
    assert (await api.call("GET", base + "/checkpoint?version=x"))[0] == 404
    async with api.client.get(base + "/tokenizer") as response:
        assert response.status == 200
        assert "model" in json.loads(await response.read())


@pytest.mark.parametrize(
    "path",
    [
        "/api/campaigns/99",
        "/api/campaigns/x",
        "/api/campaigns/-1",
        "/api/campaigns/99999999999999999999999999",
        "/api/campaigns/%D9%A3",  # an Arabic-Indic digit: int() would take it
        "/api/campaigns/1/versions",
        "/api/campaigns/1/events",
        "/api/campaigns/99/privacy",
        "/api/campaigns/x/privacy",
        "/api/nothing-here",
    ],
)
async def test_unknown_resources_are_404_in_json(api: Api, path: str) -> None:
    status, body = await api.call("GET", path)
    assert status == 404
    assert body["error"]["code"] == "not_found"


async def test_a_wrong_method_is_405_in_json_with_allow(api: Api) -> None:
    async with api.client.put("/api/health") as response:
        assert response.status == 405
        assert response.headers["Allow"] == "GET"
        assert (await response.json())["error"]["code"] == "method_not_allowed"


async def test_campaign_options_offer_every_preset_codec_and_optimizer_with_spec_defaults(api: Api) -> None:
    _, options = await api.call("GET", "/api/campaign-options")
    assert [m["name"] for m in options["models"]][:2] == ["tiny", "small"]
    assert all(m["parameters"] > 0 for m in options["models"])
    assert "int8" in options["codecs"]
    assert options["defaults"]["inner"]["steps"] == 50
    _, datasets = await api.call("GET", "/api/datasets", token=api.admin)
    assert datasets["datasets"] == ["small"]
    assert datasets["details"][0]["vocab_size"] == 512


async def test_the_server_totals_count_every_volunteer_and_their_credit(api: Api) -> None:
    store = api.service.store
    for n in range(3):
        volunteer, _ = api.service.register_volunteer(f"v{n}", {})
        with store.transaction():
            store.record_outcome(
                volunteer.id, accepted=True, credit=1.5 * n, tokens=10, trust={"consecutive_valid": 1, "errors": 0}
            )
    _, stats = await api.call("GET", "/api/stats")
    assert (stats["volunteers"], stats["credit"]) == (3, 4.5)
    assert (await api.call("GET", "/api/server", token=api.admin))[1]["volunteers"] == 3


async def test_server_health_shows_admins_uptime_queues_and_disk(api: Api) -> None:
    _, lead = await api.lead()
    await api.campaign(lead)
    status, health = await api.call("GET", "/api/server", token=api.admin)
    assert status == 200
    assert health["campaigns"] == {"active": 1}
    assert health["disk_free_bytes"] > 0 and health["database_bytes"] > 0
    assert health["uptime_s"] >= 0


PRIVATE_SPEC: dict[str, Any] = {
    **SPEC, "name": "notes", "data": "volunteer", "codec": "int8",
    "privacy": {"clip_norm": 0.5, "noise_multiplier": 1.5, "delta": 1e-6, "epsilon_budget": 8.0},
}  # fmt: skip


def _submitted(service: Coordinator, campaign_id: int, volunteer_ids: list[str], status: str = "accepted") -> None:
    """One submission by each of `volunteer_ids`, to a unit made for them in the campaign's open round (the
    store's rows only: no volunteer trains)."""
    store = service.store
    if store.open_round_of(campaign_id) is None:
        store.open_round(campaign_id, 1, 0, service.clock() + 3600, [])
    current = store.open_round_of(campaign_id)
    assert current is not None
    unit_id = uuid.uuid4().hex
    unit = {"id": unit_id, "data_start": 0, "data_tokens": 0, "data_sha": "0" * 64, "shard_index": 0, "shard": [],
            "seed": 0}  # fmt: skip
    row = {"unit_id": unit_id, "update_sha": "0" * 64, "update_size": 1, "status": status, "code": None,
           "message": "", "round_id": current.id, "staleness": 0, "weight": 1.0, "norm": 1.0, "tokens": 1,
           "seconds": 1.0, "losses": [], "credit": 0.0}  # fmt: skip
    with store.transaction():
        store.insert_unit(campaign_id, current.id, current.version, unit, service.clock())
        for volunteer_id in volunteer_ids:
            store.add_submission({**row, "volunteer_id": volunteer_id})


async def test_a_campaign_on_volunteers_data_shows_the_epsilon_each_volunteer_spent_of_its_budget(
    api_on: Api,
) -> None:
    api = api_on
    _, lead = await api.lead()
    campaign = await api.campaign(lead, **PRIVATE_SPEC)
    path = f"/api/campaigns/{campaign['id']}/privacy"
    z, delta = 1.5, 1e-6
    terms = {
        "data": "volunteer",
        "clip_norm": 0.5,
        "noise_multiplier": z,
        "noise_std": 1.5,  # z·2C
        "delta": delta,
        "epsilon_budget": 8.0,
        "updates_allowed": releases_within(8.0, delta, z),
        "epsilon_per_update": gaussian_epsilon(z, 1, delta),
    }
    assert await api.call("GET", path) == (200, {**terms, "volunteers": [], "volunteer_count": 0, "max_epsilon": 0.0})

    ada, grace, idle = (api.service.register_volunteer(name, {})[0].id for name in ("ada", "grace", "idle"))
    _submitted(api.service, campaign["id"], [ada, grace])
    _submitted(api.service, campaign["id"], [ada], status="rejected")  # every update sent is a release
    _submitted(api.service, campaign["id"], [ada])
    other = await api.campaign(lead, name="ordinary")
    _submitted(api.service, other["id"], [ada, grace, idle])  # another campaign's updates are not counted here

    status, body = await api.call("GET", path)
    assert status == 200
    assert body == {
        **terms,
        "volunteers": [
            {"volunteer_id": ada, "name": "ada", "updates": 3, "epsilon": gaussian_epsilon(z, 3, delta)},
            {"volunteer_id": grace, "name": "grace", "updates": 1, "epsilon": gaussian_epsilon(z, 1, delta)},
        ],
        "volunteer_count": 2,
        "max_epsilon": gaussian_epsilon(z, 3, delta),
    }
    assert 0 < body["epsilon_per_update"] < body["max_epsilon"] < 8.0 and body["updates_allowed"] > 3


async def test_without_noise_or_budget_every_infinite_epsilon_is_null_and_the_json_has_no_infinity(api: Api) -> None:
    _, lead = await api.lead()
    spec = {**PRIVATE_SPEC, "privacy": {"noise_multiplier": 0.0}}
    campaign = await api.campaign(lead, **spec)
    volunteer = api.service.register_volunteer("ada", {})[0].id
    _submitted(api.service, campaign["id"], [volunteer])
    async with api.client.get(f"/api/campaigns/{campaign['id']}/privacy") as response:
        text = await response.text()

    def no_constants(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    body = json.loads(text, parse_constant=no_constants)
    assert (body["noise_std"], body["epsilon_budget"], body["updates_allowed"]) == (0.0, None, None)
    assert (body["epsilon_per_update"], body["max_epsilon"]) == (None, None)
    assert body["volunteers"] == [{"volunteer_id": volunteer, "name": "ada", "updates": 1, "epsilon": None}]


async def test_the_privacy_list_shows_the_1000_volunteers_with_the_most_updates_and_counts_them_all(api: Api) -> None:
    _, lead = await api.lead()
    campaign = await api.campaign(lead, **PRIVATE_SPEC)
    _submitted(api.service, campaign["id"], [f"v{n:04d}" for n in range(1001)])
    _submitted(api.service, campaign["id"], ["v0999"])
    _, body = await api.call("GET", f"/api/campaigns/{campaign['id']}/privacy")
    assert body["volunteer_count"] == 1001
    listed = [(v["volunteer_id"], v["updates"]) for v in body["volunteers"]]
    assert len(listed) == 1000
    assert listed[:3] == [("v0999", 2), ("v0000", 1), ("v0001", 1)]  # most updates first, then by id
    assert body["max_epsilon"] == gaussian_epsilon(1.5, 2, 1e-6)


async def test_a_campaign_on_the_coordinators_data_says_only_that(api: Api) -> None:
    _, lead = await api.lead()
    campaign = await api.campaign(lead)
    assert await api.call("GET", f"/api/campaigns/{campaign['id']}/privacy") == (200, {"data": "coordinator"})
