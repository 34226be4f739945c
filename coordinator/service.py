"""The coordinator's state and use cases, shared by the WebSocket gateway and the REST API.

    >>> service = Coordinator.open(CoordinatorConfig(data_dir=Path("cw-data")))
    >>> campaign_id = service.create_campaign(spec, owner="lead:alice")
    >>> volunteer, token = service.register_volunteer("alice's desktop", capabilities={})

It owns the store, the blob directory, the datasets it may train on and one `CampaignRuntime` per
campaign. Tokens are stored hashed; a volunteer's token is shown to it once, at registration.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from coordinator.admission import AdmissionConfig, RegistrationLimiter
from coordinator.campaign import CampaignSpec, SpecError
from coordinator.engine import Assignment, CampaignRuntime, NoWork, initial_version, model_config_for, shard_plan
from coordinator.evaluations import EvaluationDesk
from coordinator.exports import ExportShelf, TryIt
from coordinator.graphs import GraphBlob, GraphBuilds, GraphPending
from coordinator.replicas import Cluster, FollowerRuntime, Served
from coordinator.sources import SourcePolicy
from coordinator.store import Blobs, Store, VersionRow, VolunteerRow, open_blobs, open_store
from coordinator.validation import TrustState
from coordinator.workers import Workers
from protocol.codecs import encoded_size_bound
from protocol.limits import MAX_MOMENTS_BYTES, MAX_UPDATE_BYTES
from protocol.moments import moments_size
from protocol.tensors import TensorSpec
from training.atomic_write import write_atomically
from training.checkpoint import load_weights
from training.data import DataError, TokenDataset
from training.evaluate import evaluate
from training.model import build_model, parameter_groups

__all__ = ["Coordinator", "CoordinatorConfig", "RuntimeChoice", "UnsupportedCodec", "hash_token"]

log = logging.getLogger(__name__)


ELSEWHERE = "every campaign training now is led by another coordinator replica"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class CoordinatorConfig:
    data_dir: Path  # the admin token, caches, exports; the store and blobs too unless given below
    database: str = field(default="", repr=False)  # postgresql://… (may hold a password); "" for SQLite in data_dir
    blobs: str = ""  # s3://BUCKET/PREFIX; "" for data_dir/blobs
    datasets: dict[str, Path] = field(default_factory=dict)
    heartbeat_interval_s: float = 15.0
    idle_timeout_s: float = 120.0  # a welcomed connection that sends nothing this long is closed
    # How long a request_work made while no campaign trains waits for one to start (0: answered at once).
    work_hold_s: float = 30.0
    eval_tokens: int = 32768
    eval_batch: int = 8
    # How long volunteers that evaluate get to settle a new version's holdout loss (coordinator.evaluations).
    eval_grace_s: float = 60.0
    public_url: str = ""
    # Where the other coordinator replicas sharing `database` reach this one (http://HOST:PORT); "" for
    # the one coordinator of its store. Needs PostgreSQL and an object store (coordinator.replicas).
    replica_url: str = ""
    replica_name: str = ""  # this replica's name among them; "" for the replica URL's host:port
    lease_ttl_s: float = 10.0  # how long a campaign's leader may go silent before another takes over
    sources: SourcePolicy = field(default_factory=SourcePolicy)  # how a connection's network prefix is told
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)  # limits per source


class UnsupportedCodec(Exception):
    """None of the codecs a volunteer offered can encode an update of any running campaign."""

    code = "unsupported_codec"
    retry_after_s = 600.0


@dataclass(frozen=True)
class RuntimeChoice:
    """The runtime a volunteer trains a campaign's units with, and for onnxruntime each shard's graph."""

    name: str
    graphs: tuple[GraphBlob, ...] = ()  # by shard index; empty for torch


@dataclass(frozen=True)
class PreparedCampaign:
    dataset_path: Path
    weights: bytes  # θ_0, safetensors
    state: bytes  # the empty outer-optimizer state


class Coordinator:
    def __init__(
        self,
        config: CoordinatorConfig,
        store: Store,
        blobs: Blobs,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.blobs = blobs
        self.clock = clock
        self.runtimes: dict[int, CampaignRuntime] = {}  # the campaigns this process aggregates
        self.followed: dict[int, FollowerRuntime] = {}  # the ones another replica leads
        self.cluster: Cluster | None = None
        self.work_dir = config.data_dir / "aggregation"
        self.eval_queue: list[tuple[int, int]] = []  # (campaign id, version) awaiting holdout loss
        self.version_listeners: list[Callable[[int, VersionRow], None]] = []
        # Called, from any thread, when a campaign starts or resumes training (volunteers waiting for one).
        self.campaign_listeners: list[Callable[[], None]] = []
        self.admin_token = ""
        self.workers = Workers(group=store.transaction)
        self.graphs = GraphBuilds(store, blobs)
        self.exports = ExportShelf(config.data_dir / "exports")
        self.try_it = TryIt()
        self.evaluations = EvaluationDesk(
            store, clock=clock, grace_s=config.eval_grace_s, batch=config.eval_batch, eval_tokens=config.eval_tokens
        )
        self.registrations = RegistrationLimiter(
            burst=config.admission.registration_burst, per_minute=config.admission.registrations_per_minute
        )
        # Link codes a machine may try: ten at once, then one a minute (a guess never reaches a live code).
        self.link_attempts = RegistrationLimiter(burst=10, per_minute=1.0)

    @classmethod
    def open(cls, config: CoordinatorConfig, *, clock: Callable[[], float] = time.time) -> Coordinator:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        store = open_store(config.database, config.data_dir, clock=clock)
        try:
            if not config.replica_url:
                store.serve_exclusively()
            blobs = open_blobs(config.blobs, config.data_dir)
        except BaseException:
            store.close()
            raise
        service = cls(config, store, blobs, clock=clock)
        service.admin_token = service._admin_token()
        if config.replica_url:
            name = config.replica_name or urllib.parse.urlsplit(config.replica_url).netloc
            service.cluster = Cluster(service, name=name, url=config.replica_url, ttl_s=config.lease_ttl_s)
            service.cluster.step()  # lead what nobody leads, follow the rest; evaluations queue as it loads
            return service
        for row in store.campaigns(("active", "paused")):
            service.load_runtime(row.id)
        for row in store.campaigns():
            for version in store.versions(row.id):
                if version.holdout_loss is None:
                    service.eval_queue.append((row.id, version.version))
        return service

    def close(self) -> None:
        self.graphs.close()
        self.exports.close()
        self.try_it.close()
        self.workers.shutdown()
        if self.cluster is not None:
            self.cluster.release_all()
        self.store.close()

    def _admin_token(self) -> str:
        """The admin token lives in data_dir/admin_token (mode 0600), made on first start.

        If an admin revoked it (DELETE /api/tokens/ID), the next start mints a new one and writes it
        there in its place; the revoked one stays revoked, and the log says so. Whoever can read the
        data directory runs the server anyway, and a server no admin can reach helps nobody."""
        path = self.config.data_dir / "admin_token"
        token = path.read_text().strip() if path.exists() else ""
        if token and self.store.api_token_role(hash_token(token)) is not None:
            return token
        if token and self.store.api_token_known(hash_token(token)):
            log.warning("the admin token in %s was revoked; a new one is written there", path)
            token = ""
        if not token:
            token = "cw-admin-" + secrets.token_urlsafe(24)
            write_atomically(path, token + "\n", mode=0o600)  # never readable by others, never half-written
        self.store.add_api_token(hash_token(token), "admin", "admin (data_dir/admin_token)")
        return token

    def load_runtime(self, campaign_id: int, *, lease: tuple[str, int] | None = None) -> CampaignRuntime:
        """Start aggregating a campaign here (under `lease`, the term of a replica that leads it)."""
        runtime = CampaignRuntime.load(
            self.store, self.blobs, campaign_id, lease=lease, clock=self.clock, work_dir=self.work_dir
        )
        runtime.on_version = self._version_published
        runtime.state.checks = self.evaluations.farm(runtime)
        self.runtimes[campaign_id] = runtime
        return runtime

    def _version_published(self, runtime: CampaignRuntime, version: VersionRow) -> None:
        self.evaluations.open(runtime, version)
        self.eval_queue.append((runtime.row.id, version.version))
        for listener in self.version_listeners:
            listener(runtime.row.id, version)

    # datasets and campaigns ------------------------------------------------------------------

    def dataset_path(self, name: str) -> Path:
        """The folder of the dataset the admin named `name` (`--dataset`, or data_dir/datasets/NAME).

        Only those names: a campaign never reaches a dataset by path, or any other prepared dataset
        on this machine would be one campaign (and its public tokenizer download) away."""
        names = self.dataset_names()
        if name not in names:
            hint = "; give one of those names, never a path" if "/" in name or "\\" in name else ""
            known = ", ".join(names) or "none"
            raise SpecError([f"dataset: {name!r} is not a dataset this coordinator serves (known: {known}){hint}"])
        return self.config.datasets.get(name) or self.config.data_dir / "datasets" / name

    def dataset_names(self) -> list[str]:
        names = set(self.config.datasets)
        folder = self.config.data_dir / "datasets"
        if folder.is_dir():
            names |= {p.name for p in folder.iterdir() if (p / "manifest.json").exists()}
        return sorted(names)

    def create_campaign(self, spec: CampaignSpec, *, owner: str) -> int:
        return self.register_campaign(spec, self.prepare_campaign(spec), owner=owner)

    def prepare_campaign(self, spec: CampaignSpec) -> PreparedCampaign:
        """The slow, side-effect-free half of creating a campaign: check the dataset and build θ_0.

        It touches neither the store nor shared state, so the REST API runs it on a worker thread
        (building version 0 of a large preset takes a while) and the event loop keeps serving.
        """
        path = self.dataset_path(spec.dataset)
        try:
            dataset = TokenDataset.open(path)
        except DataError as error:
            raise SpecError([f"dataset: {error}"]) from None
        if dataset.num_train_tokens < 2 * spec.inner.tokens_per_unit:
            raise SpecError(
                [
                    f"dataset: {spec.dataset} has {dataset.num_train_tokens} training tokens, fewer than two units of "
                    f"{spec.inner.tokens_per_unit}; shrink inner.steps, batch_size or seq_len"
                ]
            )
        batch = max(self.config.eval_batch, spec.inner.batch_size)
        needed = batch * spec.inner.seq_len + 1
        if dataset.num_holdout_tokens < needed:
            raise SpecError(
                [
                    f"dataset: {spec.dataset} has {dataset.num_holdout_tokens} holdout tokens; measuring holdout loss "
                    f"needs at least {needed} (one batch of {batch} × {spec.inner.seq_len}): prepare it again with a "
                    "holdout fraction above 0 or more text, or shrink inner.seq_len"
                ]
            )
        self._check_update_size(spec, dataset)
        weights, state = initial_version(spec, dataset)
        return PreparedCampaign(path, weights, state)

    def register_campaign(self, spec: CampaignSpec, prepared: PreparedCampaign, *, owner: str) -> int:
        """Store a prepared campaign and start serving it."""
        version0 = (self.blobs.put(prepared.weights), len(prepared.weights), self.blobs.put(prepared.state))
        campaign_id = self.store.create_campaign(spec.name, spec.to_dict(), str(prepared.dataset_path), owner, version0)
        if self.cluster is not None:
            self.cluster.adopt(campaign_id)
        else:
            self.load_runtime(campaign_id)
            self.eval_queue.append((campaign_id, 0))
            self.campaign_opened()
        return campaign_id

    def campaign_opened(self) -> None:
        """Wake the volunteers waiting for a campaign to train."""
        for listener in self.campaign_listeners:
            listener()

    @staticmethod
    def _check_update_size(spec: CampaignSpec, dataset: TokenDataset) -> None:
        """Every shard's update (with its moments frame, where the campaign shares moments) must fit in one
        `submit` frame, or no volunteer could ever return it."""
        skeleton = build_model(model_config_for(spec, dataset), device="meta")
        shapes = {name: TensorSpec(tuple(p.shape)) for name, p in skeleton.named_parameters()}
        for shard in shard_plan(list(parameter_groups(skeleton).values()), spec.shard_count):
            size = encoded_size_bound({n: shapes[n] for n in shard}, spec.codec)
            moments = moments_size({n: shapes[n].shape for n in shard}) if spec.inner.shared_moments else 0
            if moments > MAX_MOMENTS_BYTES:
                raise SpecError(
                    [
                        f"inner.shared_moments: a moments frame of this model takes {moments / 2**20:.1f} MiB, over "
                        f"the protocol's {MAX_MOMENTS_BYTES / 2**20:.0f} MiB; split the model with shard_plan = "
                        "'groups:N' or set inner.shared_moments = false"
                    ]
                )
            size += moments
            if size > MAX_UPDATE_BYTES:
                raise SpecError(
                    [
                        f"codec: an update of this model with codec {spec.codec.name} takes up to "
                        f"{size / 2**20:.0f} MiB, "
                        f"over the protocol's {MAX_UPDATE_BYTES / 2**20:.0f} MiB per update; choose a sparser codec "
                        "(topk, dct) or split the model with shard_plan = 'groups:N'"
                    ]
                )

    def set_status(self, campaign_id: int, status: str) -> None:
        self.store.set_campaign_status(campaign_id, status)
        runtime = self.runtimes.get(campaign_id)
        if runtime is not None:
            runtime.refresh()
            if status == "stopped":
                self.runtimes.pop(campaign_id, None)
        follower = self.followed.get(campaign_id)
        if follower is not None:
            follower.refresh()
            if status == "stopped":
                self.followed.pop(campaign_id, None)
        if status == "active":
            self.campaign_opened()

    # volunteers ------------------------------------------------------------------------------

    def register_volunteer(
        self, name: str, capabilities: dict[str, object], *, source: str = ""
    ) -> tuple[VolunteerRow, str]:
        """A new identity and its token; `source` is the network prefix it registered from."""
        token = "cw-vol-" + secrets.token_urlsafe(24)
        volunteer_id = uuid.uuid4().hex[:16]
        self.store.add_volunteer(volunteer_id, hash_token(token), name, capabilities, source=source)
        row = self.store.volunteer(volunteer_id)
        assert row is not None
        return row, token

    def registration_wait(self, source: str) -> float:
        """0.0 when a new volunteer may register from `source` now (which spends one of its turns);
        otherwise the seconds until it may."""
        if self.config.sources.exempt(source):
            return 0.0
        return self.registrations.take(source)

    def source_banned(self, source: str) -> bool:
        """Whether volunteers from this source are refused: a banned volunteer came from it."""
        return not self.config.sources.exempt(source) and self.store.source_banned(source)

    def volunteer_for_token(self, token: str) -> VolunteerRow | None:
        return self.store.volunteer_by_token(hash_token(token))

    def role_for_token(self, token: str) -> tuple[int, str, str] | None:
        """(token id, role, label) for an admin or project-lead API token."""
        return self.store.api_token_role(hash_token(token))

    def create_api_token(self, role: str, label: str) -> tuple[int, str]:
        token = f"cw-{role}-" + secrets.token_urlsafe(24)
        return self.store.add_api_token(hash_token(token), role, label), token

    # work --------------------------------------------------------------------------------------

    def assign_work(
        self,
        volunteer: VolunteerRow,
        *,
        memory_bytes: int,
        preferred: str | None = None,
        codecs: tuple[str, ...] | None = None,
    ) -> Assignment | NoWork:
        """A unit from the first active campaign that has one fitting this volunteer.

        Raises `UnsupportedCodec` when campaigns are running but none uses a codec the volunteer offered.
        """
        candidates = self.work_candidates(preferred=preferred, codecs=codecs)
        if isinstance(candidates, NoWork):
            return candidates
        reasons = []
        for runtime in candidates:
            if not isinstance(runtime, CampaignRuntime):
                continue  # led by another replica: the gateway forwards its leases
            answer = runtime.lease(volunteer.id, memory_bytes=memory_bytes, trust=self.trust_of(volunteer))
            if isinstance(answer, Assignment):
                return answer
            reasons.append(answer)
        return min(reasons, key=lambda r: r.retry_after_s, default=NoWork(ELSEWHERE, retry_after_s=5))

    def work_candidates(
        self, *, preferred: str | None = None, codecs: tuple[str, ...] | None = None
    ) -> list[Served] | NoWork:
        """The active campaigns to ask for a unit, the preferred one first.

        Raises `UnsupportedCodec` when campaigns are running but none uses a codec the volunteer offered.
        """
        candidates = [r for r in self.campaigns() if r.refresh().status == "active"]
        if preferred:
            candidates.sort(key=lambda r: r.row.name != preferred and str(r.row.id) != preferred)
        if not candidates:
            return NoWork("no campaign is training right now", retry_after_s=30, no_campaign=True)
        if codecs is not None:
            usable = [r for r in candidates if r.spec.codec.name in codecs]
            if not usable:
                wanted = ", ".join(sorted({r.spec.codec.name for r in candidates}))
                raise UnsupportedCodec(f"the running campaigns need codecs this app lacks ({wanted}); update the app")
            candidates = usable
        return candidates

    def runtime_choice(self, campaign: Served, runtimes: tuple[str, ...]) -> RuntimeChoice | NoWork:
        """The first of the volunteer's `runtimes` (its order of preference) this coordinator can serve
        `campaign`'s training units with now. onnxruntime needs every shard's step graph built; asking
        starts the builds."""
        return self._choice(
            campaign, runtimes, lambda: [self.graphs.step_graph(campaign.model_config, s) for s in campaign.shards]
        )

    def evaluation_choice(self, campaign: Served, runtimes: tuple[str, ...]) -> RuntimeChoice | NoWork:
        """As `runtime_choice`, for an evaluate unit: onnxruntime needs the model's loss graph."""
        return self._choice(
            campaign, runtimes, lambda: [self.graphs.loss_graph(campaign.model_config, list(campaign.shapes))]
        )

    @staticmethod
    def _choice(
        campaign: Served, runtimes: tuple[str, ...], graphs: Callable[[], list[GraphBlob | GraphPending]]
    ) -> RuntimeChoice | NoWork:
        waiting: list[str] = []
        failed = True
        for name in runtimes:
            if name == "torch":
                return RuntimeChoice("torch")
            if name != "onnxruntime":
                continue
            found = graphs()
            built = [g for g in found if isinstance(g, GraphBlob)]
            if len(built) == len(found):
                return RuntimeChoice("onnxruntime", tuple(built))
            pending = next(g for g in found if not isinstance(g, GraphBlob))
            waiting.append(f"campaign {campaign.row.name}: {pending.reason}")
            failed = failed and pending.failed
        reason = "; ".join(waiting) or "none of the runtimes this app offers works here"
        return NoWork(reason, retry_after_s=600 if failed else 15)

    @staticmethod
    def trust_of(volunteer: VolunteerRow) -> TrustState:
        return TrustState(volunteer.consecutive_valid, volunteer.errors)

    def runtime_for_unit(self, unit_id: str) -> Served | None:
        """The running campaign a unit belongs to (None for an unknown unit or a stopped campaign)."""
        unit = self.store.unit(unit_id)
        if unit is None:
            return None
        return self.runtimes.get(unit.campaign_id) or self.followed.get(unit.campaign_id)

    def campaigns(self) -> list[Served]:
        """Every campaign served, led here or by another replica, by id."""
        both: dict[int, Served] = {**self.followed, **self.runtimes}
        return [both[campaign_id] for campaign_id in sorted(both)]

    def volunteer_may_read(self, volunteer_id: str, digest: str) -> bool:
        """Blobs a volunteer may download: published checkpoints and their deltas, ONNX graphs and its own
        units' data."""
        return (
            self.store.is_checkpoint(digest)
            or self.store.is_delta(digest)
            or self.store.is_moments(digest)
            or self.graphs.is_graph(digest)
            or self.evaluations.is_blob(digest)
            or self.store.is_unit_data_of(digest, volunteer_id)
            or self._is_private_tokenizer(digest)
        )

    def _is_private_tokenizer(self, digest: str) -> bool:
        """Whether `digest` is the tokenizer of a campaign on volunteers' own data led here (public: it is
        the dataset's tokenizer, which anyone training on their own files needs)."""
        for runtime in list(self.runtimes.values()):
            state = runtime.state
            if state.spec.private and state.tokenizer_blob()[0] == digest:
                return True
        return False

    def tick(self) -> None:
        for runtime in list(self.runtimes.values()):
            runtime.tick()

    def evaluate_pending(self) -> list[tuple[int, int, float]]:
        """Holdout loss of every published version still without one, here and now."""
        done = []
        while self.eval_queue:
            campaign_id, version = self.eval_queue.pop(0)
            job = self.eval_job(campaign_id, version)
            if job is not None:
                loss = job()
                self.store.set_holdout_loss(campaign_id, version, loss)
                done.append((campaign_id, version, loss))
        return done

    def eval_job(self, campaign_id: int, version: int) -> Callable[[], float] | None:
        """A closure computing the holdout loss of a version; it touches no shared state, so it can
        run on a worker thread while the event loop goes on serving volunteers."""
        row = self.store.version(campaign_id, version)
        campaign = self.store.campaign(campaign_id)
        if row is None or campaign is None:
            return None
        runtime = self.runtimes.get(campaign_id)
        dataset = runtime.dataset if runtime else TokenDataset.open(Path(campaign.dataset_path))
        spec = CampaignSpec.from_dict(campaign.spec)
        weights = self.blobs.get(row.checkpoint_sha)
        tokens = dataset.holdout_slice(0, min(self.config.eval_tokens + 1, dataset.num_holdout_tokens))
        batch = self.config.eval_batch

        def job() -> float:
            model = build_model(model_config_for(spec, dataset))
            model.load_state_dict(load_weights(weights), strict=False)
            with torch.inference_mode():
                loss = evaluate(model, tokens, batch_size=batch, seq_len=spec.inner.seq_len)
            log.info("campaign %s version %d: holdout loss %.4f", campaign.name, version, loss)
            return loss

        return job
