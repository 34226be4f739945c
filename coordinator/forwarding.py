"""How a replica hands a campaign's work to the replica that leads it, and how the leader takes it.

    POST /internal/campaigns/{campaign_id}/{op}      op: lease, heartbeat, abandon, submit
    Authorization: Bearer <the sending replica's token>
    X-Commonweights-Replica: <the sending replica's name>
    Content-Type: application/msgpack                 (a map; the answer is one too)

| op        | asks                                                       | answers                                     |
|-----------|------------------------------------------------------------|---------------------------------------------|
| lease     | volunteer_id, memory_bytes                                 | unit_id, lease_id, deadline — or reason,    |
|           |                                                            | retry_after_s, no_campaign                  |
| heartbeat | volunteer_id, unit_id, lease_id, step                      | deadline — or code, message                 |
| abandon   | volunteer_id, unit_id, lease_id                            | {}                                          |
| submit    | volunteer_id, unit_id, lease_id, sha256, size,             | status, code, message, credit               |
|           | moments_sha256 (or nil), losses, tokens, seconds, device   |                                             |

An update travels only by its digest: the follower stored it in the object store before forwarding
(durable first), and the leader reads it back and checks it against the digest. 401 for a token that
isn't the named replica's, 409 when this replica doesn't lead the campaign (any more), 400 for a
malformed body. These routes are for replicas only: the load balancer must not route /internal/ from
outside (deploy/haproxy.cfg refuses it).

A follower that can't reach the leader, or hears 409, raises `LeaderUnavailable`: a volunteer asking
for work hears `no_work` with a short retry, one reporting on a unit is asked to reconnect, and its
app resends what wasn't acknowledged once another replica took the campaign over.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from coordinator.appkeys import SERVICE
from coordinator.engine import Assignment, CampaignRuntime, NoWork, Outcome, SubmissionReport
from coordinator.engine.states import OutcomeStatus
from coordinator.replicas import FollowerRuntime, LeaderUnavailable
from coordinator.service import Coordinator
from coordinator.store import LeaseLost
from coordinator.store.blobs import sha256_hex

__all__ = ["FORWARDER", "REPLICA_HEADER", "Forwarder", "add_internal_routes"]

log = logging.getLogger(__name__)

REPLICA_HEADER = "X-Commonweights-Replica"
MAX_BODY = 512 * 1024  # a submit's losses (up to 10,000 steps) are the largest field: about 90 KB
TIMEOUT_S = 60.0  # a submit waits for the leader's verdict, which may include a holdout check
MSGPACK = "application/msgpack"


class Forwarder:
    """A follower's client for its campaigns' leaders (one pooled HTTP session for all of them)."""

    def __init__(self, service: Coordinator) -> None:
        assert service.cluster is not None
        self.service = service
        self.cluster = service.cluster
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[int, str] = {}  # campaign id -> its leader's URL, until a call to it fails

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, campaign_id: int, op: str, body: dict[str, Any]) -> dict[str, Any]:
        url = self._urls.get(campaign_id)
        if url is None:
            url = await self.service.workers.run(self.cluster.leader_url, campaign_id)
            if url is None:
                raise LeaderUnavailable(f"no replica leads campaign {campaign_id} right now")
            self._urls[campaign_id] = url
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        headers = {
            "Authorization": f"Bearer {self.cluster.token}",
            REPLICA_HEADER: self.cluster.name,
            "Content-Type": MSGPACK,
        }
        try:
            async with self._session.post(
                f"{url}/internal/campaigns/{campaign_id}/{op}", data=msgspec.msgpack.encode(body), headers=headers
            ) as response:
                data = await response.read()
                if response.status != 200:
                    raise LeaderUnavailable(f"the leader of campaign {campaign_id} answered {response.status}")
        except (TimeoutError, aiohttp.ClientError) as error:
            self._urls.pop(campaign_id, None)
            raise LeaderUnavailable(f"the leader of campaign {campaign_id} is unreachable ({error!r})") from None
        except LeaderUnavailable:
            self._urls.pop(campaign_id, None)
            raise
        answer = msgspec.msgpack.decode(data)
        if not isinstance(answer, dict):
            raise LeaderUnavailable(f"the leader of campaign {campaign_id} answered something other than a map")
        return answer

    # the follower's side of each op ----------------------------------------------------------------

    async def lease(self, follower: FollowerRuntime, volunteer_id: str, memory_bytes: int) -> Assignment | NoWork:
        try:
            answer = await self.call(
                follower.row.id, "lease", {"volunteer_id": volunteer_id, "memory_bytes": memory_bytes}
            )
        except LeaderUnavailable as error:
            log.info("%s", error)
            return NoWork(f"campaign {follower.row.name} is changing hands between coordinator replicas", 5.0)
        if "unit_id" in answer:
            return await self.service.workers.run(
                follower.assignment, str(answer["unit_id"]), str(answer["lease_id"]), float(answer["deadline"])
            )
        return NoWork(str(answer["reason"]), float(answer["retry_after_s"]), bool(answer.get("no_campaign")))

    async def heartbeat(
        self, follower: FollowerRuntime, volunteer_id: str, unit_id: str, lease_id: str, step: int
    ) -> float | tuple[str, str]:
        body = {"volunteer_id": volunteer_id, "unit_id": unit_id, "lease_id": lease_id, "step": step}
        answer = await self.call(follower.row.id, "heartbeat", body)
        if "deadline" in answer:
            return float(answer["deadline"])
        return str(answer["code"]), str(answer["message"])

    async def abandon(self, follower: FollowerRuntime, volunteer_id: str, unit_id: str, lease_id: str) -> None:
        body = {"volunteer_id": volunteer_id, "unit_id": unit_id, "lease_id": lease_id}
        await self.call(follower.row.id, "abandon", body)

    async def submit(
        self,
        follower: FollowerRuntime,
        volunteer_id: str,
        unit_id: str,
        lease_id: str,
        payload: bytes,
        sha256: str,
        moments: bytes,
        report: SubmissionReport,
    ) -> Outcome:
        """Store the update (and its moments frame), then have the leader judge it by its digest."""
        stored = await self.service.workers.run(
            follower.store_update, volunteer_id, unit_id, lease_id, payload, moments
        )
        moments_sha = await self.service.workers.run(sha256_hex, moments) if stored and moments else None
        body = {
            "volunteer_id": volunteer_id,
            "unit_id": unit_id,
            "lease_id": lease_id,
            "sha256": sha256,
            "size": len(payload),
            "moments_sha256": moments_sha,
            "losses": report.losses,
            "tokens": report.tokens,
            "seconds": report.seconds,
            "device": report.device,
        }
        answer = await self.call(follower.row.id, "submit", body)
        return Outcome(
            OutcomeStatus(answer["status"]),
            answer["code"] if isinstance(answer.get("code"), str) else None,
            str(answer["message"]),
            float(answer["credit"]),
        )


FORWARDER = web.AppKey("forwarder", Forwarder)


# the leader's side ---------------------------------------------------------------------------------


class BadBody(Exception):
    pass


def _get(body: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BadBody(f"{name}: expected {kind}, got {type(value).__name__}")
    return value


Op = Callable[[Coordinator, CampaignRuntime, dict[str, Any]], Awaitable[dict[str, Any]]]


async def _lease(service: Coordinator, runtime: CampaignRuntime, body: dict[str, Any]) -> dict[str, Any]:
    volunteer = await service.workers.run(service.store.volunteer, _get(body, "volunteer_id", str))
    if volunteer is None:
        return {"reason": "unknown volunteer", "retry_after_s": 60.0, "no_campaign": False}
    answer = await service.workers.commit_in_order(
        runtime.row.id,
        runtime.lease,
        volunteer.id,
        memory_bytes=_get(body, "memory_bytes", int),
        trust=service.trust_of(volunteer),
    )
    if isinstance(answer, Assignment):
        return {"unit_id": answer.unit.id, "lease_id": answer.lease_id, "deadline": answer.lease_deadline}
    return {"reason": answer.reason, "retry_after_s": answer.retry_after_s, "no_campaign": answer.no_campaign}


async def _heartbeat(service: Coordinator, runtime: CampaignRuntime, body: dict[str, Any]) -> dict[str, Any]:
    step = body.get("step")
    extended = await service.workers.run(
        runtime.heartbeat,
        _get(body, "volunteer_id", str),
        _get(body, "unit_id", str),
        _get(body, "lease_id", str),
        step=step if isinstance(step, int) else None,
    )
    if isinstance(extended, tuple):
        return {"code": extended[0], "message": extended[1]}
    return {"deadline": extended}


async def _abandon(service: Coordinator, runtime: CampaignRuntime, body: dict[str, Any]) -> dict[str, Any]:
    await service.workers.run_in_order(
        runtime.row.id,
        runtime.abandon,
        _get(body, "volunteer_id", str),
        _get(body, "unit_id", str),
        _get(body, "lease_id", str),
    )
    return {}


async def _submit(service: Coordinator, runtime: CampaignRuntime, body: dict[str, Any]) -> dict[str, Any]:
    volunteer_id, lease_id = _get(body, "volunteer_id", str), _get(body, "lease_id", str)
    moments_sha = body.get("moments_sha256")
    losses = _get(body, "losses", list)
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in losses):
        raise BadBody("losses: expected numbers")
    report = SubmissionReport(
        losses=[float(x) for x in losses],
        tokens=_get(body, "tokens", int),
        seconds=float(_get(body, "seconds", (int, float))),
        device=_get(body, "device", str),
    )
    prepared = await service.workers.run(
        runtime.prepare_stored,
        volunteer_id,
        _get(body, "unit_id", str),
        lease_id,
        _get(body, "sha256", str),
        _get(body, "size", int),
        moments_sha=moments_sha if isinstance(moments_sha, str) else None,
    )
    outcome = await service.workers.commit_in_order(
        runtime.row.id, runtime.commit, volunteer_id, lease_id, prepared, report
    )
    if runtime.close_due is not None:
        await service.workers.run_in_order(runtime.row.id, runtime.close_if_due)
    return {"status": outcome.status.value, "code": outcome.code, "message": outcome.message, "credit": outcome.credit}


OPS: dict[str, Op] = {"lease": _lease, "heartbeat": _heartbeat, "abandon": _abandon, "submit": _submit}


async def _internal(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    cluster = service.cluster
    op = OPS.get(request.match_info["op"])
    if cluster is None or op is None:
        raise web.HTTPNotFound()
    name = request.headers.get(REPLICA_HEADER, "")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not await service.workers.run(cluster.authorized, name, token):
        raise web.HTTPUnauthorized(text="not a replica of this coordinator")
    if (request.content_length or 0) > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length or 0)
    campaign_id = int(request.match_info["campaign_id"])
    runtime = service.runtimes.get(campaign_id)
    if runtime is None:
        raise web.HTTPConflict(text=f"replica {cluster.name} doesn't lead campaign {campaign_id}")
    try:
        # A map with string keys, or DecodeError; the app's client_max_size bounds the read.
        body = msgspec.msgpack.decode(await request.read(), type=dict[str, Any])
        answer = await op(service, runtime, body)
    except (BadBody, ValueError, msgspec.DecodeError) as error:
        raise web.HTTPBadRequest(text=f"malformed {request.match_info['op']} body: {error}") from None
    except LeaseLost as error:
        raise web.HTTPConflict(text=str(error)) from None
    return web.Response(body=msgspec.msgpack.encode(answer), content_type=MSGPACK)


async def _forwarder(app: web.Application) -> AsyncIterator[None]:
    service = app[SERVICE]
    if service.cluster is None:
        yield
        return
    app[FORWARDER] = Forwarder(service)
    yield
    await app[FORWARDER].close()


def add_internal_routes(app: web.Application) -> None:
    """The routes replicas forward to, and this replica's client for forwarding (after the service opens)."""
    app.router.add_post(r"/internal/campaigns/{campaign_id:\d+}/{op}", _internal)
    app.cleanup_ctx.append(_forwarder)
