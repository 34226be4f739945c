"""One work unit, from its blobs to the encoded update: build, train, pause, resume, encode.

    >>> store = UnitStore(Path("~/.local/share/commonweights/units"))
    >>> runner = UnitRunner(unit, store, choose_device("auto"))
    >>> trained = runner.run(checkpoint_bytes, data_bytes, on_step=print, should_stop=paused.is_set)
    >>> trained is None          # stopped at a step boundary: the unit is checkpointed in `store`
    >>> trained = runner.run(checkpoint_bytes, data_bytes)      # resumes from that checkpoint
    >>> trained.update           # the shard's Δ, error-compensated and encoded with the unit's codec

The runner owns the unit's local state (`UnitStore`): the `work_unit` frame as received, the inner
loop's state when it stopped early (weights, AdamW moments, losses; safetensors, never pickle), the
finished `submit` frame until the coordinator has answered it, and the error-feedback residual of
each campaign. A stopped run frees the model and, on a GPU, the memory PyTorch cached for it; the
next `run` rebuilds the model from the checkpoint blob and continues from the saved step, giving
the same update as a run that never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import math
import shutil
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
import numpy as np
import torch

from protocol.codecs import CodecConfig, CodecError, TensorSpec, decode, encode
from protocol.errors import ErrorCode, ProtocolError
from protocol.limits import MAX_LOSS
from protocol.messages import InnerRecipe, PrivateRecipe, TrainMetrics, WorkUnit
from protocol.messages import ModelConfig as WireModelConfig
from protocol.messages import decode as decode_frame
from protocol.moments import decode_moments, encode_moments, moment_bound
from training.atomic_write import write_atomically
from training.checkpoint import CheckpointError, load_state, load_weights, save_state
from training.error_feedback import ErrorFeedback
from training.inner import InnerConfig, InnerLoop, StepReport, unit_batches
from training.model import GPT, ModelConfig
from training.moments import Moments, as_records, from_records, loop_moments, seed_loop
from training.onnx_graphs import GraphError, OrtInnerLoop, check_served_graph, ort_session
from training.privacy import add_secure_gaussian_noise, clip_update
from volunteer_app.devices import DeviceInfo

__all__ = [
    "FAULTS",
    "Fault",
    "RunnerError",
    "TrainedUnit",
    "UnitRunner",
    "UnitStore",
    "inner_config_of",
    "model_config_of",
    "tokens_of",
]

Fault = Literal["nan", "shape", "norm100", "replay", "flipped"]
FAULTS: Final[tuple[Fault, ...]] = ("nan", "shape", "norm100", "replay", "flipped")
FailureReason = Literal["out_of_memory", "diverged", "error"]

CHECKPOINT_EVERY_S: Final = 120.0
_DTYPES: Final[dict[str, np.dtype[Any]]] = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


class RunnerError(Exception):
    """A unit this volunteer can't finish; `reason` is the `abandon` reason to report."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason: FailureReason = reason
        self.message = message


@dataclass(frozen=True)
class TrainedUnit:
    """A finished unit: the encoded update and what to report about it."""

    unit_id: str
    campaign_id: str
    update: bytes
    update_sha256: str
    metrics: TrainMetrics
    # The campaign's error-feedback residual after this update; saved with the submit frame (see
    # UnitStore.save_submit), so a crash before then can't apply the same correction twice.
    feedback: ErrorFeedback | None = None
    alternate_update: bytes | None = None  # --inject-fault replay: a second, different update
    moments: bytes = b""  # the shard's final second moment, where the unit's recipe shares them


# --- Mapping the wire onto the training core ---------------------------------------------------


def model_config_of(config: WireModelConfig) -> ModelConfig:
    # The wire's model config and the training core's have the same fields, by design.
    return ModelConfig(**msgspec.structs.asdict(config))


def inner_config_of(recipe: InnerRecipe) -> InnerConfig:
    """The recipe less `global_step`, which says where the unit starts rather than how it trains."""
    fields = msgspec.structs.asdict(recipe)
    del fields["global_step"]
    return InnerConfig(**fields)


def tokens_of(unit: WorkUnit, data: bytes) -> np.ndarray:
    """The data slice's token ids (little-endian `data_dtype`), checked against the vocabulary."""
    dtype = _DTYPES[unit.data_dtype]
    # A unit on the owner's own data carries no slice: the worker reads exactly what the recipe needs.
    count = unit.recipe.tokens_needed if unit.private is not None else unit.data_tokens
    if len(data) != count * dtype.itemsize:
        raise RunnerError("error", f"the data slice is {len(data)} bytes; the unit needs {count * dtype.itemsize}")
    tokens: np.ndarray = np.frombuffer(data, dtype=dtype)
    highest = int(tokens.max()) if tokens.size else 0
    if highest >= unit.model.config.vocab_size:
        raise RunnerError(
            "error",
            f"the data slice holds token id {highest}, outside the vocabulary ({unit.model.config.vocab_size})",
        )
    return tokens


# --- Local state --------------------------------------------------------------------------------


class UnitStore:
    """Units in progress under `root`: `units/<key>/{unit,state,submit}` and `feedback/<key>`.

    Directory names are hashes of the coordinator's ids, which are not all valid file names
    everywhere (`:` on Windows). Every write goes to a temp file renamed into place, so a crash
    leaves either the old file or the new one.
    """

    UNIT = "unit.frame"
    STATE = "state.safetensors"
    SUBMIT = "submit.frame"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def unit_dir(self, unit_id: str) -> Path:
        return self.root / "units" / _key(unit_id)

    def save_unit(self, unit_frame: bytes) -> WorkUnit:
        """Keep a `work_unit` frame (as received) so a restart can carry on with the unit."""
        unit = _decode_unit(unit_frame)
        write_atomically(self.unit_dir(unit.unit_id) / self.UNIT, unit_frame)
        return unit

    def units(self) -> list[tuple[WorkUnit, bytes]]:
        """Units kept on disk, oldest first, with their frames; unreadable leftovers are dropped."""
        found: list[tuple[float, WorkUnit, bytes]] = []
        for folder in _subdirs(self.root / "units"):
            path = folder / self.UNIT
            try:
                frame = path.read_bytes()
                found.append((path.stat().st_mtime, _decode_unit(frame), frame))
            except (OSError, ProtocolError):
                shutil.rmtree(folder, ignore_errors=True)
        return [(unit, frame) for _, unit, frame in sorted(found, key=lambda item: item[0])]

    def save_state(self, unit_id: str, state: dict[str, Any]) -> None:
        write_atomically(self.unit_dir(unit_id) / self.STATE, save_state(state))

    def load_state(self, unit_id: str) -> dict[str, Any] | None:
        try:
            data = (self.unit_dir(unit_id) / self.STATE).read_bytes()
        except FileNotFoundError:
            return None
        try:
            return load_state(data)
        except CheckpointError:
            return None  # a torn or foreign file: the unit starts over, which is always correct

    def has_state(self, unit_id: str) -> bool:
        return (self.unit_dir(unit_id) / self.STATE).is_file()

    def discard_state(self, unit_id: str) -> None:
        (self.unit_dir(unit_id) / self.STATE).unlink(missing_ok=True)

    def save_submit(self, unit_id: str, submit_frame: bytes, *, trained: TrainedUnit | None = None) -> None:
        """Keep the finished update until the coordinator answers it; the training state can go.

        With `trained`, its campaign's error-feedback residual is saved too, after the frame: a
        crash in between loses one small correction rather than applying it twice.
        """
        write_atomically(self.unit_dir(unit_id) / self.SUBMIT, submit_frame)
        if trained is not None and trained.feedback is not None:
            self.save_feedback(trained.campaign_id, trained.feedback)
        (self.unit_dir(unit_id) / self.STATE).unlink(missing_ok=True)

    def load_submit(self, unit_id: str) -> bytes | None:
        try:
            return (self.unit_dir(unit_id) / self.SUBMIT).read_bytes()
        except FileNotFoundError:
            return None

    def discard(self, unit_id: str) -> None:
        """Forget a unit: answered, lost with its lease, or abandoned."""
        shutil.rmtree(self.unit_dir(unit_id), ignore_errors=True)

    def load_feedback(self, campaign_id: str) -> ErrorFeedback:
        feedback = ErrorFeedback()
        path = self.root / "feedback" / f"{_key(campaign_id)}.safetensors"
        with contextlib.suppress(FileNotFoundError, CheckpointError):
            residual = load_state(path.read_bytes()).get("residual", {})
            feedback.residual = {name: value for name, value in residual.items() if isinstance(value, torch.Tensor)}
        return feedback

    def save_feedback(self, campaign_id: str, feedback: ErrorFeedback) -> None:
        path = self.root / "feedback" / f"{_key(campaign_id)}.safetensors"
        write_atomically(path, save_state({"residual": feedback.residual}))


# --- Training -----------------------------------------------------------------------------------


class UnitRunner:
    """Trains `unit` on `device`, checkpointing into `store`; see the module docstring."""

    def __init__(
        self,
        unit: WorkUnit,
        store: UnitStore,
        device: DeviceInfo,
        *,
        fault: Fault | None = None,
        checkpoint_every_s: float = CHECKPOINT_EVERY_S,
    ) -> None:
        self.unit = unit
        self.store = store
        self.device = device
        self.fault = fault
        self.checkpoint_every_s = checkpoint_every_s
        self.config = inner_config_of(unit.recipe)
        self.graph: bytes | None = None  # the step graph, for a unit of the onnxruntime runtime
        self.moments: bytes | None = None  # the shared second moment's blob, where the unit names one

    @property
    def resumable(self) -> bool:
        """Whether a run would continue from a local checkpoint instead of step 0."""
        return self.store.has_state(self.unit.unit_id)

    def run(
        self,
        checkpoint: bytes,
        data: bytes,
        *,
        graph: bytes | None = None,
        moments: bytes | None = None,
        on_step: Callable[[StepReport], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainedUnit | None:
        """Train to the end (the encoded update) or until `should_stop()` at a step boundary (None).

        A unit for the onnxruntime runtime trains with its step graph, `graph` (the blob the unit
        names). `moments` is the blob of the unit's `moments`, the shared second moment its AdamW
        starts from. Runs on the calling thread; the worker calls it through `asyncio.to_thread`.
        """
        self.graph = self._checked_graph(graph)
        if (moments is None) != (self.unit.moments is None):
            raise RunnerError("error", "the unit's moments blob is missing, or given to a unit that names none")
        self.moments = moments
        tokens = tokens_of(self.unit, data)
        if self.device.kind == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device.torch_device)
        try:
            trained = self._train(checkpoint, tokens, on_step, should_stop)
        finally:
            # The model and optimizer are gone with _train's frame; hand their memory back (a
            # paused volunteer must not sit on the GPU).
            if self.device.kind != "cpu":
                gc.collect()  # slow (a tenth of a second), so only where there is device memory to free
            if self.device.kind == "cuda":
                torch.cuda.empty_cache()
            elif self.device.kind == "mps":
                torch.mps.empty_cache()
        if trained is None:
            return None
        delta, metrics, moments = trained
        return dataclasses.replace(self._encode(delta, metrics), moments=moments)

    def _train(
        self,
        checkpoint: bytes,
        tokens: np.ndarray,
        on_step: Callable[[StepReport], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> tuple[dict[str, torch.Tensor], TrainMetrics, bytes] | None:
        unit = self.unit
        torch.manual_seed(unit.seed)
        loop = self._new_loop(checkpoint)
        state = self.store.load_state(unit.unit_id)
        if state is not None and not _load_loop_state(loop, state):
            self.store.discard_state(unit.unit_id)  # doesn't fit this unit: start over, which is always right
            loop = self._new_loop(checkpoint)
        last_save = time.monotonic()

        def step_done(report: StepReport) -> None:
            nonlocal last_save
            if report.loss > MAX_LOSS:
                raise FloatingPointError(f"training diverged: loss {report.loss:.3g} at step {report.step}")
            if on_step is not None:
                on_step(report)
            # A periodic checkpoint bounds what a crash or a reboot can lose.
            if report.step < report.steps_total and time.monotonic() - last_save >= self.checkpoint_every_s:
                self.store.save_state(unit.unit_id, loop.state_dict())
                last_save = time.monotonic()

        try:
            result = loop.run(tokens, on_step=step_done, should_stop=should_stop)
        except FloatingPointError as error:
            raise RunnerError("diverged", str(error)) from None
        except torch.OutOfMemoryError as error:
            raise RunnerError("out_of_memory", f"{self.device.name} ran out of memory: {error}") from None
        if not result.finished:
            self.store.save_state(unit.unit_id, loop.state_dict())
            return None
        peak = torch.cuda.max_memory_allocated(self.device.torch_device) if self.device.kind == "cuda" else None
        metrics = TrainMetrics(
            # A unit on the owner's own data: its losses are of that data, which the noise doesn't cover.
            losses=tuple(result.losses) if unit.private is None else (),
            tokens=result.tokens,
            seconds=min(result.seconds, 1e7),
            device=self.device.kind,
            device_name=self.device.name,
            runtime=self.unit.runtime,
            peak_memory_bytes=peak,
        )
        moments = encode_moments(as_records(loop_moments(loop))) if unit.recipe.shared_moments else b""
        delta = {name: result.delta[name] for name in unit.shard}
        if unit.private is not None:
            delta = privatize(delta, unit.private)
        return delta, metrics, moments

    def _new_loop(self, checkpoint: bytes) -> InnerLoop | OrtInnerLoop:
        loop: InnerLoop | OrtInnerLoop
        try:
            if self.graph is not None:
                params = {n: w.numpy() for n, w in self._weights(checkpoint).items()}
                loop = OrtInnerLoop(
                    self.graph,
                    self.config,
                    params,
                    trainable=self.unit.shard,
                    global_step=self.unit.recipe.global_step,
                    threads=torch.get_num_threads(),
                )
            else:
                model = self._build_model(checkpoint)
                loop = InnerLoop(
                    model, self.config, global_step=self.unit.recipe.global_step, trainable=self.unit.shard
                )
        except ValueError as error:
            raise RunnerError("error", f"the unit's shard doesn't fit its model: {error}") from None
        if self.moments is not None:
            seed_loop(loop, self._shared_moments(self.moments))
        return loop

    def _shared_moments(self, blob: bytes) -> Moments:
        """The unit's moments blob, checked against the model: a moments frame of every parameter."""
        shapes = self._shapes()
        try:
            return from_records(decode_moments(blob, shapes, most=moment_bound(self.config.grad_clip)), shapes)
        except CodecError as error:
            raise RunnerError("error", f"the unit's moments are unusable: {error}") from None

    def _checked_graph(self, graph: bytes | None) -> bytes | None:
        """The unit's graph blob: there exactly when the unit names onnxruntime, and a plain ONNX model."""
        if (graph is None) != (self.unit.runtime == "torch"):
            raise RunnerError("error", f"a unit for {self.unit.runtime} needs its graph blob, and only that one")
        if graph is not None:
            try:
                check_served_graph(graph)
            except GraphError as error:
                raise RunnerError("error", f"the unit's graph is refused: {error}") from None
        return graph

    def _build_model(self, checkpoint: bytes) -> GPT:
        weights = self._weights(checkpoint)
        model = GPT(model_config_of(self.unit.model.config))
        model.load_state_dict(weights, strict=True)
        return model.to(self.device.torch_device)

    def _weights(self, checkpoint: bytes) -> dict[str, torch.Tensor]:
        """The checkpoint's tensors, checked against the unit's model and shard."""
        unit = self.unit
        shapes = self._shapes()
        wrong = [n for n in unit.shard if tuple(unit.shard_shapes[n]) != shapes.get(n)]
        if wrong:
            raise RunnerError("error", f"the unit's shard shapes don't match its model: {', '.join(wrong[:3])}")
        try:
            return load_weights(checkpoint, shapes)
        except CheckpointError as error:
            raise RunnerError("error", f"the unit's checkpoint is unusable: {error}") from None

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's shape in the unit's model."""
        try:
            config = model_config_of(self.unit.model.config)
            with torch.device("meta"):
                return {name: tuple(p.shape) for name, p in GPT(config).named_parameters()}
        except ValueError as error:
            raise RunnerError("error", f"the unit's model config is not usable: {error}") from None

    def evaluate(self, checkpoint: bytes, data: bytes, *, graph: bytes | None = None) -> tuple[list[float], float]:
        """An evaluate unit: the loss of each of its batches (forward only) and the seconds it took.

        With `graph` (the unit names the onnxruntime runtime) the loss graph computes them."""
        graph = self._checked_graph(graph)
        batches = unit_batches(tokens_of(self.unit, data), self.config)
        began = time.perf_counter()
        losses: list[float] = []
        if graph is not None:
            session = ort_session(graph, threads=torch.get_num_threads())
            weights = self._weights(checkpoint)
            feed = {f"param.{n}": w.numpy() for n, w in weights.items()}
            wanted = sorted([*feed, "input_ids", "targets"])
            if sorted(i.name for i in session.get_inputs()) != wanted or [o.name for o in session.get_outputs()] != [
                "loss"
            ]:
                raise RunnerError("error", "the unit's loss graph is for another model")
            for inputs, targets in batches:
                (loss,) = session.run(["loss"], feed | {"input_ids": inputs.numpy(), "targets": targets.numpy()})
                losses.append(float(loss))
        else:
            model = self._build_model(checkpoint).eval()
            device = self.device.torch_device
            with torch.inference_mode():
                losses = [float(model.loss(x.to(device), y.to(device))) for x, y in batches]
        if not all(math.isfinite(x) and 0 <= x <= MAX_LOSS for x in losses):
            raise RunnerError("diverged", "the model's loss on the unit's batches is not a finite number")
        return losses, time.perf_counter() - began

    def _encode(self, delta: dict[str, torch.Tensor], metrics: TrainMetrics) -> TrainedUnit:
        unit = self.unit
        try:
            codec = CodecConfig.from_dict(unit.codec)
        except CodecError as error:
            raise RunnerError("error", f"the unit's codec is not usable: {error}") from None
        specs = {name: TensorSpec(tuple(unit.shard_shapes[name])) for name in unit.shard}
        alternate: bytes | None = None
        feedback: ErrorFeedback | None = None
        if unit.private is not None and self.fault is None:
            update = encode(delta, codec)  # no error feedback: the protocol forbids it on noised updates
        elif self.fault is None or self.fault == "replay":
            # What the codec drops from this update rides along with the campaign's next one.
            feedback = self.store.load_feedback(unit.campaign_id)
            to_send = feedback.compensate(delta)
            update = encode(to_send, codec)
            feedback.remember(to_send, decode(update, specs, config=codec))
            if self.fault == "replay":
                alternate = encode({name: 0.5 * value for name, value in to_send.items()}, codec)
        else:
            update = encode(_corrupt(delta, self.fault), codec)
            if self.fault == "nan":
                update = _poison_first_value(update, codec)
        if len(update) > unit.max_update_bytes:
            raise RunnerError(
                "error",
                f"the encoded update is {len(update)} bytes; the unit allows at most {unit.max_update_bytes}",
            )
        return TrainedUnit(
            unit_id=unit.unit_id,
            campaign_id=unit.campaign_id,
            update=update,
            update_sha256=hashlib.sha256(update).hexdigest(),
            metrics=metrics,
            feedback=feedback,
            alternate_update=alternate,
        )


def privatize(delta: dict[str, torch.Tensor], private: PrivateRecipe) -> dict[str, torch.Tensor]:
    """The update clipped to `clip_norm` with N(0, (z·2C)²) added to every value (protocol.md, units on
    volunteers' own data). The noise comes from the operating system's cryptographic randomness, never
    from the unit's seed or a seeded generator: the coordinator knows the seed, and a Mersenne Twister's
    state can be solved from its output, either of which would let it subtract the noise."""
    clipped, _ = clip_update({name: tensor.detach().float().cpu() for name, tensor in delta.items()}, private.clip_norm)
    return add_secure_gaussian_noise(clipped, private.noise_multiplier * 2 * private.clip_norm)


def _corrupt(delta: dict[str, torch.Tensor], fault: Fault) -> dict[str, torch.Tensor]:
    """The update a misbehaving volunteer would send (the hidden --inject-fault flag)."""
    if fault == "norm100":
        return {name: 100.0 * value for name, value in delta.items()}
    if fault == "flipped":
        return {name: -value for name, value in delta.items()}
    if fault == "shape":
        first = next(iter(delta))
        return {**delta, first: delta[first].reshape(-1)[:-1]}  # flattened and one element short
    return delta


_CODEC_PARAM_BYTES: Final = {"int8": 4, "topk": 8, "dct": 4, "int4": 4, "int2": 4, "sign1": 4}
_NAN_BYTES: Final = {"fp16": b"\x00\x7e", "bf16": b"\xc0\x7f"}


def _poison_first_value(frame: bytes, codec: CodecConfig) -> bytes:
    """`frame` with a NaN where its first tensor's first float lies (the encoder refuses to write one).

    Walks the tensor frame layout of protocol/codecs/frame.py: header, params, count, then the
    first record's name, dtype, dims and payload length; for topk the payload opens with k.
    """
    position = 8 + _CODEC_PARAM_BYTES.get(codec.name, 0) + 4
    (name_length,) = struct.unpack_from("<H", frame, position)
    position += 2 + name_length
    ndim = frame[position + 1]
    position += 2 + 4 * ndim + 8 + (4 if codec.name == "topk" else 0)
    nan = _NAN_BYTES.get(codec.name, struct.pack("<f", math.nan))
    return frame[:position] + nan + frame[position + len(nan) :]


def _load_loop_state(loop: InnerLoop | OrtInnerLoop, state: dict[str, Any]) -> bool:
    """Whether `state` was loaded; on False the loop may be half-loaded and must be rebuilt."""
    try:
        loop.load_state_dict(state)
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError):
        return False
    return True


def _decode_unit(frame: bytes) -> WorkUnit:
    message = decode_frame(frame, direction="to_client")
    if not isinstance(message, WorkUnit):
        raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"expected a work_unit frame, got {message.TYPE}")
    return message


def _key(identifier: str) -> str:
    return hashlib.sha256(identifier.encode()).hexdigest()[:24]


def _subdirs(path: Path) -> list[Path]:
    try:
        return [child for child in path.iterdir() if child.is_dir()]
    except FileNotFoundError:
        return []
