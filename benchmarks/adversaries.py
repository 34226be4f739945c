"""Attacker volunteers: real processes that speak the protocol and lie, one way each.

    python -m benchmarks.adversaries --kind sign_flip --coordinator ws://127.0.0.1:8470/ws \\
        --name attacker-0 --report attacker-0.jsonl

Used by `commonweights bench adversarial` (benchmarks/adversarial.py) and by
tests/integration/test_attacks.py. An adversary is a client written from docs/protocol.md, like a
third party's: it says hello, asks for work, downloads blobs, sends progress and submits; it knows
nothing of how the coordinator defends itself. Where a lie needs a plausible update it trains the
unit for real with the volunteer's own training core (volunteer_app.unit_runner's mapping of a unit
onto training.inner.InnerLoop). The kinds (`Kind`):

- `sign_flip`: −Δ of a real training, with its real losses.
- `scale_up`, `scale_neg`, `scale_down`: Δ × 2, × −0.5, × 0.05 of a real training.
- `noise`: Gaussian noise with each tensor's norm of a real training, and its real losses.
- `free_rider`: trains nothing per unit: noise at an honest norm (measured once, on the first unit
  it gets) and every step's loss copied from the public holdout loss of the unit's version
  (`/api/campaigns/{id}/versions`), sent after as long as a real training takes.
- `replay`: trains its first unit, gives that unit back, and submits the same update for every
  later unit.
- `stale`: trains each unit from a version STALE_BY older than the unit's (old checkpoints are
  public: their sha256 is on `/versions`, their bytes a `blob_request` away).
- `nan`: an update with a NaN in it (a real encoder refuses to write one: the bytes are patched), sent
  as often as a real training would finish.
- `forged`: everything the protocol lets it try with ids that aren't its own: `progress` and
  `submit` under made-up lease ids for its own unit, and under its old lease (and made-up ones) for
  units it gave back that others now hold; a `hello` with another volunteer's public id as token;
  a claim of 1,000× the tokens trained.
- `colluding`: two identities (two processes) sharing `--partner-dir`: for a unit and its replica
  (same data slice, seed and version) both submit the same bogus update (−Δ of one real training).
- `hog`: requests work again and again and extends every lease it gets with `progress`, never
  submitting: the starvation attack.

Each adversary appends what it did and what the coordinator answered to `--report` as JSON lines
(`welcome`, `submit`, `progress`, `hello`, `abandon`, `leases`), so a harness can tell an attempt
refused before the store saw it (a forged lease) from one that was never made.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import random
import secrets
import signal
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, TypeVar

import torch
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from coordinator.client import ApiError, CoordinatorClient
from protocol.codecs import CODEC_NAMES, CodecConfig, encode
from protocol.errors import ProtocolError
from protocol.limits import MAX_BLOB_CHUNK_BYTES, MAX_FRAME_BYTES
from protocol.messages import (
    Abandon,
    BlobChunk,
    BlobRef,
    BlobRequest,
    Capabilities,
    Device,
    ErrorMessage,
    Goodbye,
    Hello,
    LeaseExtended,
    Message,
    NoWork,
    Progress,
    RequestWork,
    Result,
    Submit,
    ToClientMessage,
    TrainMetrics,
    Welcome,
    WorkUnit,
)
from protocol.messages import decode as decode_frame
from protocol.messages import encode as encode_frame
from protocol.moments import decode_moments
from protocol.version import PROTOCOL_VERSION
from training.atomic_write import write_atomically
from training.checkpoint import load_weights
from training.inner import InnerLoop, StepReport
from training.model import GPT
from training.moments import from_records, seed_loop
from volunteer_app.blob_cache import BlobCache
from volunteer_app.unit_runner import inner_config_of, model_config_of, tokens_of

__all__ = ["KINDS", "Kind", "main"]


class Kind(StrEnum):
    SIGN_FLIP = "sign_flip"
    SCALE_UP = "scale_up"
    SCALE_NEG = "scale_neg"
    SCALE_DOWN = "scale_down"
    NOISE = "noise"
    FREE_RIDER = "free_rider"
    REPLAY = "replay"
    STALE = "stale"
    NAN = "nan"
    FORGED = "forged"
    COLLUDING = "colluding"
    HOG = "hog"


KINDS: Final[tuple[Kind, ...]] = tuple(Kind)

SCALES: Final = {Kind.SIGN_FLIP: -1.0, Kind.SCALE_UP: 2.0, Kind.SCALE_NEG: -0.5, Kind.SCALE_DOWN: 0.05}
STALE_BY: Final = 3  # versions older than the unit's that `stale` trains from
TOKEN_CLAIM: Final = 1000  # how many times the tokens trained `forged` claims
HOG_MAX_LEASES: Final = 256  # a hog stops asking past this many (a bound on its own memory, not a courtesy)
HOG_ASK_EVERY_S: Final = 0.5
COLLUDE_WAIT_S: Final = 120.0  # how long a colluder waits for its partner's update before computing one
ANSWER_TIMEOUT_S: Final = 60.0
MAX_WAIT_S: Final = 5.0  # the longest no_work wait it honours: adversaries are impatient

T = TypeVar("T")


class Stop(Exception):
    """The coordinator ended the conversation for good (a ban, a fatal refusal); `code` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


# --- the wire ------------------------------------------------------------------------------------------


class Link:
    """One websocket to the coordinator: frames out, and each answer handed to whoever waits for it.

    Frames nobody waits for are dropped, except refusals of `progress`, which end a lease: their
    unit ids land in `lost`.
    """

    def __init__(self, ws: ClientConnection, welcome: Welcome) -> None:
        self.ws = ws
        self.welcome = welcome
        self.lost: set[str] = set()
        self._waiters: list[tuple[Callable[[ToClientMessage], bool], asyncio.Future[ToClientMessage]]] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, hello: Hello, *, bind: str | None) -> Link:
        ws = await _connect(url, bind)
        await ws.send(encode_frame(hello))
        raw = await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT_S)
        reply = decode_frame(raw.encode() if isinstance(raw, str) else raw, direction="to_client")
        if isinstance(reply, ErrorMessage):
            await ws.close()
            raise Stop(str(reply.code), f"hello refused: {reply.message}")
        if not isinstance(reply, Welcome):
            await ws.close()
            raise Stop("unexpected_message", f"hello answered with {reply.TYPE}")
        return cls(ws, reply)

    async def send(self, message: Message) -> None:
        await self.ws.send(encode_frame(message))

    async def ask(self, message: Message, answers: Callable[[ToClientMessage], bool]) -> ToClientMessage:
        """Send `message` and return the first frame `answers` accepts."""
        future: asyncio.Future[ToClientMessage] = asyncio.get_running_loop().create_future()
        entry = (answers, future)
        self._waiters.append(entry)
        try:
            await self.send(message)
            return await asyncio.wait_for(future, ANSWER_TIMEOUT_S)
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    async def close(self, reason: str) -> None:
        with contextlib.suppress(ConnectionClosed, OSError):
            await self.send(Goodbye(reason=reason))
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                if not isinstance(raw, bytes):
                    continue  # a text frame: not this protocol
                try:
                    message = decode_frame(raw, direction="to_client")
                except ProtocolError:
                    continue
                for answers, future in list(self._waiters):
                    if not future.done() and answers(message):
                        future.set_result(message)
                        break
                else:
                    if isinstance(message, ErrorMessage) and message.ref_type == "progress" and message.ref_id:
                        self.lost.add(message.ref_id)
        except ConnectionClosed:
            pass
        finally:
            for _, future in self._waiters:
                if not future.done():
                    future.set_exception(ConnectionError("the coordinator closed the connection"))


async def _connect(url: str, bind: str | None) -> ClientConnection:
    # Extra keyword arguments go to the event loop's create_connection: a source address of our choosing.
    extra: dict[str, Any] = {"local_addr": (bind, 0)} if bind else {}
    return await connect(url, max_size=MAX_FRAME_BYTES, compression=None, open_timeout=30, **extra)


def _error_for(kind: str, ref: str | None = None) -> Callable[[ToClientMessage], bool]:
    def match(m: ToClientMessage) -> bool:
        return isinstance(m, ErrorMessage) and m.ref_type == kind and (ref is None or m.ref_id in (ref, None))

    return match


def _either(*tests: Callable[[ToClientMessage], bool]) -> Callable[[ToClientMessage], bool]:
    return lambda m: any(test(m) for test in tests)


def rest_base(ws_url: str) -> str:
    """The coordinator's http(s) base from its websocket URL (ws://host:port/ws → http://host:port)."""
    scheme, rest = ws_url.split("://", 1)
    return ("https" if scheme == "wss" else "http") + "://" + rest.split("/", 1)[0]


# --- what an adversary computes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Trained:
    delta: dict[str, torch.Tensor]
    losses: list[float]
    tokens: int
    seconds: float


def train(
    unit: WorkUnit,
    checkpoint: bytes,
    data: bytes,
    *,
    on_step: Callable[[StepReport], None],
    moments: bytes | None = None,
) -> Trained:
    """The unit trained honestly (as volunteer_app.unit_runner does, less error feedback), on the CPU; its
    AdamW seeded with `moments`, the blob of the unit's shared second moment, where it names one."""
    config = model_config_of(unit.model.config)
    torch.manual_seed(unit.seed)
    with torch.device("meta"):
        shapes = {name: tuple(p.shape) for name, p in GPT(config).named_parameters()}
    model = GPT(config)
    model.load_state_dict(load_weights(checkpoint, shapes), strict=True)
    loop = InnerLoop(model, inner_config_of(unit.recipe), global_step=unit.recipe.global_step, trainable=unit.shard)
    if moments is not None:
        seed_loop(loop, from_records(decode_moments(moments, shapes), shapes))
    result = loop.run(tokens_of(unit, data), on_step=on_step)
    return Trained({n: result.delta[n] for n in unit.shard}, list(result.losses), result.tokens, result.seconds)


def scaled(delta: dict[str, torch.Tensor], factor: float) -> dict[str, torch.Tensor]:
    return {n: factor * t for n, t in delta.items()}


def noise_like(
    norms: dict[str, float], shapes: dict[str, tuple[int, ...]], rng: torch.Generator
) -> dict[str, torch.Tensor]:
    """Gaussian noise, each tensor with the given norm."""
    out = {}
    for name, shape in shapes.items():
        t = torch.randn(shape, generator=rng)
        out[name] = t * (norms[name] / max(float(t.norm()), 1e-12))
    return out


def norms_of(delta: dict[str, torch.Tensor]) -> dict[str, float]:
    return {n: float(t.norm()) for n, t in delta.items()}


def encode_for(unit: WorkUnit, delta: dict[str, torch.Tensor]) -> bytes:
    """`delta` encoded with the unit's codec, tensors in the shard's order."""
    return encode({n: delta[n] for n in unit.shard}, CodecConfig.from_dict(dict(unit.codec)))


# Codec parameter bytes by codec id (protocol/codecs/frame.py): fp32, fp16, bf16, int8, topk, dct.
_PARAM_BYTES: Final = {1: 0, 2: 0, 3: 0, 4: 4, 5: 8, 6: 4, 7: 4, 8: 4, 9: 4}
_NAN: Final = {1: struct.pack("<f", math.nan), 2: b"\x00\x7e", 3: b"\xc0\x7f"}


def poisoned(frame: bytes) -> bytes:
    """`frame` with a NaN as its first tensor's first float: the first value (fp32/fp16/bf16) or the
    first block scale (the other codecs), found by walking the tensor-frame layout."""
    codec = frame[6]
    position = 8 + _PARAM_BYTES[codec] + 4
    (name_length,) = struct.unpack_from("<H", frame, position)
    position += 2 + name_length
    ndim = frame[position + 1]
    position += 2 + 4 * ndim + 8 + (4 if codec == 5 else 0)  # topk's payload opens with k
    nan = _NAN.get(codec, _NAN[1])
    return frame[:position] + nan + frame[position + len(nan) :]


# --- the adversary ---------------------------------------------------------------------------------------


@dataclass
class Options:
    kind: Kind
    coordinator: str
    name: str
    report: Path | None = None
    partner_dir: Path | None = None
    bind: str | None = None
    cache_dir: Path | None = None
    seed: int = 0
    threads: int = 1


@dataclass
class Calibration:
    """What an honest unit looks like, from one real training: the free rider's and the liars' template."""

    norms: dict[str, float]
    losses: list[float]
    tokens: int
    seconds: float


@dataclass
class Adversary:
    options: Options
    cache: BlobCache
    link: Link | None = None
    token: str | None = None
    volunteer_id: str = ""
    rng: random.Random = field(default_factory=random.Random)
    calibration: Calibration | None = None
    replayed: tuple[bytes, TrainMetrics] | None = None  # `replay`: the update it sends for every unit
    given_back: list[tuple[str, str]] = field(default_factory=list)  # `forged`: (unit, our old lease)
    forged_hello_tried: bool = False

    # --- plumbing -----------------------------------------------------------------------------------

    @property
    def kind(self) -> Kind:
        return self.options.kind

    @property
    def api(self) -> CoordinatorClient:
        return CoordinatorClient(rest_base(self.options.coordinator), timeout=10)

    def record(self, event: str, **fields: Any) -> None:
        line = {"t": round(time.time(), 3), "event": event, "kind": str(self.kind), "volunteer_id": self.volunteer_id}
        line.update(fields)
        print(json.dumps(line), flush=True)
        if self.options.report is not None:
            with self.options.report.open("a") as report:
                report.write(json.dumps(line) + "\n")

    def hello(self, token: str | None) -> Hello:
        return Hello(
            protocol_version=PROTOCOL_VERSION,
            client_version="0.1.0",
            token=token,
            name=self.options.name,
            capabilities=Capabilities(
                devices=(Device(kind="cpu", name="cpu", memory_bytes=8 << 30),),
                memory_bytes=8 << 30,
                threads=self.options.threads,
                codecs=tuple(CODEC_NAMES),
                platform=sys.platform,
                runtimes=("torch",),
                unit_kinds=("train",),
            ),
        )

    async def connect(self) -> Link:
        link = await Link.open(self.options.coordinator, self.hello(self.token), bind=self.options.bind)
        if link.welcome.token is not None:
            self.token = link.welcome.token
        self.volunteer_id = link.welcome.volunteer_id
        self.record("welcome", name=self.options.name, registered=link.welcome.token is not None)
        self.link = link
        return link

    async def run(self) -> None:
        """Attack until stopped; a dropped connection is opened again with the same identity."""
        failures = 0
        while True:
            try:
                link = await self.connect()
                failures = 0
                if self.kind is Kind.HOG:
                    await self.hog(link)
                while True:
                    unit = await self.next_unit(link)
                    link.lost.discard(unit.unit_id)
                    await self.attack(link, unit)
            except (ConnectionClosed, ConnectionError, OSError, TimeoutError) as error:
                failures += 1
                self.record("disconnected", error=str(error)[:200])
                if self.link is not None:
                    with contextlib.suppress(ConnectionClosed, OSError):
                        await self.link.close("reconnecting")
                    self.link = None
                await asyncio.sleep(min(30.0, 0.5 * 2**failures) * self.rng.uniform(0.5, 1.0))

    async def next_unit(self, link: Link) -> WorkUnit:
        while True:
            answer = await link.ask(
                RequestWork(), _either(lambda m: isinstance(m, WorkUnit | NoWork), _error_for("request_work"))
            )
            if isinstance(answer, WorkUnit):
                return answer
            wait = answer.retry_after_s if isinstance(answer, NoWork | ErrorMessage) else None
            await asyncio.sleep(min(MAX_WAIT_S, max(0.5, wait or 1.0)))

    async def blob(self, link: Link, ref: BlobRef) -> bytes:
        async def chunk(sha256: str, offset: int, length: int) -> BlobChunk:
            answer = await link.ask(
                BlobRequest(sha256=sha256, offset=offset, length=min(length, MAX_BLOB_CHUNK_BYTES)),
                _either(
                    lambda m: isinstance(m, BlobChunk) and m.sha256 == sha256 and m.offset == offset,
                    _error_for("blob_request", sha256),
                ),
            )
            if isinstance(answer, ErrorMessage):
                raise ConnectionError(f"blob {sha256[:12]}: {answer.code}: {answer.message}")
            assert isinstance(answer, BlobChunk)
            return answer

        return await self.cache.fetch(ref, chunk)

    async def beating(self, link: Link, unit: WorkUnit, work: Awaitable[T], step: Callable[[], int]) -> T:
        """`work`'s result, with `progress` sent every heartbeat interval meanwhile (as honest clients do)."""
        task = asyncio.ensure_future(work)
        interval = link.welcome.heartbeat_interval_s
        while True:
            done, _ = await asyncio.wait({task}, timeout=interval)
            if done:
                return task.result()
            await link.send(self.progress(unit, unit.lease_id, step()))

    def progress(self, unit: WorkUnit, lease_id: str, step: int, *, unit_id: str | None = None) -> Progress:
        steps = unit.recipe.steps
        return Progress(
            unit_id=unit_id or unit.unit_id,
            lease_id=lease_id,
            step=min(step, steps),
            steps_total=steps,
            loss=None,
            tokens=min(step, steps) * unit.recipe.tokens_needed // max(1, steps),
            phase="training",
        )

    async def trained(self, link: Link, unit: WorkUnit, *, checkpoint: BlobRef | None = None) -> Trained:
        """A real training of `unit` (from `checkpoint` instead of the unit's, for `stale`), heartbeating."""
        weights = await self.blob(link, checkpoint or unit.checkpoint)
        if unit.data is None:
            raise Stop("unsupported", "the adversaries train on the coordinator's data, not on volunteers' own")
        data = await self.blob(link, unit.data)
        moments = await self.blob(link, unit.moments) if unit.moments is not None else None
        done = [0]

        def on_step(report: StepReport) -> None:
            done[0] = report.step

        result = await self.beating(
            link,
            unit,
            asyncio.to_thread(train, unit, weights, data, on_step=on_step, moments=moments),
            lambda: done[0],
        )
        if self.calibration is None:
            self.calibration = Calibration(norms_of(result.delta), result.losses, result.tokens, result.seconds)
        return result

    async def calibrated(self, link: Link, unit: WorkUnit) -> Calibration:
        """How an honest unit looks, measured once on the first unit (that training is never submitted)."""
        if self.calibration is None:
            await self.trained(link, unit)
        assert self.calibration is not None
        return self.calibration

    async def pace(self, link: Link, unit: WorkUnit, seconds: float) -> None:
        """Wait as long as a real training takes, heartbeating like one."""
        began = time.monotonic()
        steps = unit.recipe.steps

        def step() -> int:
            return min(steps - 1, int(steps * (time.monotonic() - began) / max(seconds, 1e-3)))

        await self.beating(link, unit, asyncio.sleep(seconds), step)

    async def submit(
        self,
        link: Link,
        unit: WorkUnit,
        update: bytes,
        metrics: TrainMetrics,
        how: str,
        *,
        unit_id: str | None = None,
        lease_id: str | None = None,
    ) -> None:
        unit_id = unit_id or unit.unit_id
        lease_id = lease_id or unit.lease_id
        answer = await link.ask(
            Submit(
                unit_id=unit_id,
                lease_id=lease_id,
                update=update,
                update_sha256=_sha256(update),
                metrics=metrics,
            ),
            _either(
                lambda m: isinstance(m, Result) and m.unit_id == unit_id and m.lease_id == lease_id,
                _error_for("submit", unit_id),
            ),
        )
        if isinstance(answer, Result):
            self.record(
                "submit", how=how, unit_id=unit_id, lease_id=lease_id, version=unit.model_version,
                status=answer.status, code=answer.code, credit=answer.credit, message=answer.message,
            )  # fmt: skip
        else:
            assert isinstance(answer, ErrorMessage)
            self.record(
                "submit", how=how, unit_id=unit_id, lease_id=lease_id, version=unit.model_version,
                status="refused", code=answer.code, credit=0.0, message=answer.message,
            )  # fmt: skip

    async def abandon(self, link: Link, unit: WorkUnit, why: str) -> None:
        await link.send(Abandon(unit_id=unit.unit_id, lease_id=unit.lease_id, reason="user_request", detail=why))
        self.record("abandon", unit_id=unit.unit_id, why=why)

    def metrics(self, losses: list[float], tokens: int, seconds: float) -> TrainMetrics:
        return TrainMetrics(
            losses=tuple(min(max(0.0, x), 1e6) for x in losses), tokens=tokens, seconds=min(seconds, 1e7),
            device="cpu", device_name="cpu", runtime="torch",
        )  # fmt: skip

    # --- the attacks ----------------------------------------------------------------------------------

    async def attack(self, link: Link, unit: WorkUnit) -> None:
        kind = self.kind
        if kind in SCALES:
            t = await self.trained(link, unit)
            await self.submit(link, unit, encode_for(unit, scaled(t.delta, SCALES[kind])),
                              self.metrics(t.losses, t.tokens, t.seconds), kind.value)  # fmt: skip
        elif kind is Kind.NOISE:
            t = await self.trained(link, unit)
            noise = noise_like(norms_of(t.delta), _shapes(unit), self.generator())
            await self.submit(link, unit, encode_for(unit, noise), self.metrics(t.losses, t.tokens, t.seconds), "noise")
        elif kind is Kind.FREE_RIDER:
            await self.free_ride(link, unit)
        elif kind is Kind.REPLAY:
            await self.replay(link, unit)
        elif kind is Kind.STALE:
            await self.stale(link, unit)
        elif kind is Kind.NAN:
            c = await self.calibrated(link, unit)
            update = poisoned(encode_for(unit, noise_like(c.norms, _shapes(unit), self.generator())))
            await self.pace(link, unit, c.seconds)  # as often as a trainer would, not a flood
            await self.submit(link, unit, update, self.metrics(c.losses, c.tokens, c.seconds), "nan")
        elif kind is Kind.FORGED:
            await self.forge(link, unit)
        elif kind is Kind.COLLUDING:
            await self.collude(link, unit)
        else:  # pragma: no cover - HOG never leaves `hog`
            raise AssertionError(kind)

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.rng.getrandbits(63))

    async def free_ride(self, link: Link, unit: WorkUnit) -> None:
        c = await self.calibrated(link, unit)
        loss = await asyncio.to_thread(self.public_loss, unit)
        losses = [loss if loss is not None else c.losses[0]] * unit.recipe.steps
        noise = noise_like(c.norms, _shapes(unit), self.generator())
        await self.pace(link, unit, c.seconds)
        tokens = unit.recipe.steps * unit.recipe.grad_accum * unit.recipe.batch_size * unit.recipe.seq_len
        await self.submit(link, unit, encode_for(unit, noise), self.metrics(losses, tokens, c.seconds), "free_rider")

    def public_loss(self, unit: WorkUnit) -> float | None:
        """The holdout loss the coordinator published for the unit's version (or the latest before it)."""
        try:
            versions = self.api.versions(int(unit.campaign_id))
        except (ApiError, OSError, ValueError):
            return None
        known = [v for v in versions if v["holdout_loss"] is not None and v["version"] <= unit.model_version]
        return float(known[-1]["holdout_loss"]) if known else None

    async def replay(self, link: Link, unit: WorkUnit) -> None:
        if self.replayed is None:
            t = await self.trained(link, unit)
            self.replayed = (encode_for(unit, t.delta), self.metrics(t.losses, t.tokens, t.seconds))
            await self.abandon(link, unit, "kept its update to replay it")
            return
        update, metrics = self.replayed
        await self.pace(link, unit, metrics.seconds)
        await self.submit(link, unit, update, metrics, "replay")

    async def stale(self, link: Link, unit: WorkUnit) -> None:
        old = await asyncio.to_thread(self.old_checkpoint, unit)
        if old is None:
            await self.abandon(link, unit, "no older version to train from yet")
            await asyncio.sleep(2.0)  # or the same unit comes straight back
            return
        t = await self.trained(link, unit, checkpoint=old)
        await self.submit(link, unit, encode_for(unit, t.delta), self.metrics(t.losses, t.tokens, t.seconds), "stale")

    def old_checkpoint(self, unit: WorkUnit) -> BlobRef | None:
        if unit.model_version == 0:
            return None
        try:
            versions = self.api.versions(int(unit.campaign_id))
        except (ApiError, OSError, ValueError):
            return None
        wanted = max(0, unit.model_version - STALE_BY)
        for v in versions:
            if v["version"] == wanted:
                size = unit.checkpoint.size  # every version of a campaign has the same shapes
                return BlobRef(sha256=str(v["checkpoint_sha256"]), size=size)
        return None

    async def forge(self, link: Link, unit: WorkUnit) -> None:
        if not self.forged_hello_tried:
            self.forged_hello_tried = True
            await self.forge_hello()
        c = await self.calibrated(link, unit)
        noise = encode_for(unit, noise_like(c.norms, _shapes(unit), self.generator()))
        claim = self.metrics(c.losses, c.tokens * TOKEN_CLAIM, c.seconds)
        made_up = secrets.token_hex(8)
        await self.try_progress(link, unit, unit.unit_id, made_up, "own unit, made-up lease")
        await self.submit(link, unit, noise, claim, "own unit, made-up lease", lease_id=made_up)
        for other_unit, old_lease in self.given_back[-3:]:
            # The unit went back to the pool; somebody else holds it now (or soon will).
            await self.try_progress(link, unit, other_unit, old_lease, "another's unit, our old lease")
            await self.try_progress(link, unit, other_unit, secrets.token_hex(8), "another's unit, made-up lease")
            await self.submit(link, unit, noise, claim, "another's unit, our old lease", unit_id=other_unit,
                              lease_id=old_lease)  # fmt: skip
            await self.submit(link, unit, noise, claim, "another's unit, made-up lease", unit_id=other_unit,
                              lease_id=secrets.token_hex(8))  # fmt: skip
        await self.submit(link, unit, noise, claim, "made-up unit", unit_id=secrets.token_hex(16))
        # Give the unit back so another volunteer takes it: its id is the next round's target.
        await self.abandon(link, unit, "giving it to somebody else to forge their lease")
        self.given_back.append((unit.unit_id, unit.lease_id))
        await asyncio.sleep(1.0)

    async def try_progress(self, link: Link, unit: WorkUnit, unit_id: str, lease_id: str, how: str) -> None:
        answer = await link.ask(
            self.progress(unit, lease_id, 1, unit_id=unit_id),
            _either(
                lambda m: isinstance(m, LeaseExtended) and m.unit_id == unit_id and m.lease_id == lease_id,
                _error_for("progress", unit_id),
            ),
        )
        outcome = "extended" if isinstance(answer, LeaseExtended) else str(getattr(answer, "code", "?"))
        self.record("progress", how=how, unit_id=unit_id, lease_id=lease_id, answer=outcome)

    async def forge_hello(self) -> None:
        """A hello whose token is another volunteer's public id, and one with a token made up."""
        try:
            others = [v["id"] for v in await asyncio.to_thread(self.api.volunteers) if v["id"] != self.volunteer_id]
        except (ApiError, OSError):
            others = []
        for how, token in [("another's public id as token", others[0] if others else None),
                           ("made-up token", secrets.token_urlsafe(32))]:  # fmt: skip
            if token is None:
                continue
            try:
                link = await Link.open(self.options.coordinator, self.hello(token), bind=self.options.bind)
            except Stop as refused:
                self.record("hello", how=how, answer=refused.code)
                continue
            except (ConnectionClosed, ConnectionError, OSError, TimeoutError) as error:
                self.record("hello", how=how, answer=f"connection failed: {error}"[:200])
                continue
            self.record("hello", how=how, answer="welcome", as_volunteer=link.welcome.volunteer_id)
            await link.close("forged hello")

    async def collude(self, link: Link, unit: WorkUnit) -> None:
        """Submit the pair's shared bogus update for this unit's data, seed and version."""
        folder = self.options.partner_dir
        if folder is None:
            raise Stop("usage", "colluding needs --partner-dir, a folder shared with its partner")
        folder.mkdir(parents=True, exist_ok=True)
        slice_id = unit.data.sha256 if unit.data is not None else unit.unit_id
        key = f"{slice_id[:24]}-{unit.seed}-{unit.model_version}-{'.'.join(unit.shard)[:40]}"
        update_path, meta_path = folder / f"{key}.update", folder / f"{key}.json"
        how = "copied from partner"
        try:
            os.close(os.open(folder / f"{key}.lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            mine = True
        except FileExistsError:
            mine = False
        if not mine:
            began = time.monotonic()
            waited = self.beating(link, unit, self.wait_for(meta_path, COLLUDE_WAIT_S), lambda: 1)
            if not await waited:
                self.record(
                    "collude",
                    unit_id=unit.unit_id,
                    what="partner never wrote its update",
                    seconds=round(time.monotonic() - began, 1),
                )
                mine = True
        if mine:
            t = await self.trained(link, unit)
            write_atomically(update_path, encode_for(unit, scaled(t.delta, -1.0)), durable=False)
            write_atomically(meta_path, json.dumps({"losses": t.losses, "tokens": t.tokens, "seconds": t.seconds,
                                                    "by": self.volunteer_id}), durable=False)  # fmt: skip
            how = "computed for the pair"
        meta = json.loads(meta_path.read_text())
        await self.submit(link, unit, update_path.read_bytes(), self.metrics(meta["losses"], meta["tokens"],
                          meta["seconds"]), how)  # fmt: skip

    @staticmethod
    async def wait_for(path: Path, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)
        return True

    async def hog(self, link: Link) -> None:
        """Lease everything on offer and keep every lease alive with progress; never submit."""
        held: dict[str, tuple[WorkUnit, float]] = {}
        last_beat = 0.0
        most = 0
        interval = link.welcome.heartbeat_interval_s
        while True:
            for unit_id in link.lost & held.keys():
                del held[unit_id]
            link.lost.clear()
            if len(held) < HOG_MAX_LEASES:
                answer = await link.ask(
                    RequestWork(), _either(lambda m: isinstance(m, WorkUnit | NoWork), _error_for("request_work"))
                )
                if isinstance(answer, WorkUnit):
                    held[answer.unit_id] = (answer, time.monotonic())
                elif isinstance(answer, ErrorMessage) and answer.code == "rate_limited":
                    await asyncio.sleep(min(MAX_WAIT_S, answer.retry_after_s or 1.0))
            now = time.monotonic()
            if now - last_beat >= interval * 0.8:
                last_beat = now
                for unit, since in list(held.values()):
                    # Steps that creep towards the end but never reach it: it looks like slow training.
                    step = min(unit.recipe.steps - 1, int((now - since) / interval))
                    await link.send(self.progress(unit, unit.lease_id, step))
            if len(held) != most:
                most = len(held)
                self.record("leases", held=most)
            await asyncio.sleep(HOG_ASK_EVERY_S)


def _shapes(unit: WorkUnit) -> dict[str, tuple[int, ...]]:
    return {n: tuple(unit.shard_shapes[n]) for n in unit.shard}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _cache_dir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="commonweights-adversary-") as folder:
        yield Path(folder)


# --- command line -----------------------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.adversaries",
        description="An attacker volunteer for `commonweights bench adversarial` and the attack tests.",
    )
    parser.add_argument("--kind", required=True, choices=[k.value for k in KINDS])
    parser.add_argument("--coordinator", required=True, metavar="URL", help="e.g. ws://127.0.0.1:8470/ws")
    parser.add_argument("--name", default=None, help="display name (default: attacker-KIND)")
    parser.add_argument("--partner-dir", type=Path, default=None, metavar="DIR", help="colluding: the shared folder")
    parser.add_argument("--bind", default=None, metavar="ADDR", help="the local address to connect from")
    parser.add_argument("--report", type=Path, default=None, metavar="FILE", help="append what it did as JSON lines")
    parser.add_argument("--cache-dir", type=Path, default=None, metavar="DIR", help="downloaded blobs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for training")
    args = parser.parse_args(argv)
    kind = Kind(args.kind)
    return Options(
        kind=kind, coordinator=args.coordinator, name=args.name or f"attacker-{kind.value}", report=args.report,
        partner_dir=args.partner_dir, bind=args.bind, cache_dir=args.cache_dir, seed=args.seed, threads=args.threads,
    )  # fmt: skip


async def _main(options: Options) -> int:
    torch.set_num_threads(options.threads)
    with _cache_dir(options.cache_dir) as folder:
        adversary = Adversary(options, BlobCache(folder, max_bytes=1 << 30), rng=random.Random(options.seed))
        task = asyncio.ensure_future(adversary.run())
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Stop as stop:
            adversary.record("stopped", why=str(stop))
            return 2
        finally:
            if adversary.link is not None:
                with contextlib.suppress(ConnectionClosed, OSError):
                    await adversary.link.close("adversary stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(_main(parse(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
