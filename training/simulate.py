"""The local DiLoCo simulator: K workers, one process, the same update math as the real system.

    >>> result = simulate(SimConfig(workers=4, inner_steps=50, codec="int8", steps=400), dataset)
    >>> result.final_holdout_loss, result.bytes_per_worker

Three ways to spend the same tokens on the same K data streams:

- `diloco`: each worker runs H inner AdamW steps from θ_v on its own slice, its pseudo-gradient is
  compressed (with error feedback), decoded, averaged by tokens, and the outer optimizer makes θ_{v+1}.
  By default it runs what the deployed system runs (`inner_state="fresh"`): each round's K units go to
  K of a pool of volunteers drawn at random, every unit starts a fresh AdamW (a volunteer builds a new
  `InnerLoop` per unit) and may ramp its learning rate over its steps (`unit_warmup`, off as deployed), error
  feedback stays with the volunteer, and a fraction of units arrive a version late and are
  down-weighted as the coordinator does. `inner_state="persistent"` is DiLoCo as
  published: worker k keeps its AdamW moments across rounds. `inner_state="volunteer"`: each volunteer
  keeps its AdamW moments across the units it happens to train (stale if it skipped rounds).
  `inner_state="shared"`: every unit starts a fresh AdamW seeded with the median of the previous round's
  units' factored second moments (`training.moments`), which each unit uploads beside its update.
- `data_parallel`: synchronous data-parallel, the fair baseline: every step the K workers' gradients
  on the same per-worker batches are averaged and one AdamW step is taken with the same schedule.
  Each worker uploads an fp32 gradient every step.
- `single`: one worker trains on all K streams in turn, K times as many steps, nothing uploaded.

Worker k reads the k-th of K equal partitions of the training stream, one window per step; the
three modes (and every H) see the same windows of text in the same order.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from protocol.codecs import CodecConfig, decode, encode
from protocol.moments import decode_moments, encode_moments
from protocol.tensors import TensorSpec
from training.accumulator import DeltaAccumulator, staleness_weight
from training.data import DataError, TokenDataset, ensure_default_dataset
from training.error_feedback import ErrorFeedback
from training.evaluate import evaluate
from training.inner import InnerConfig, InnerLoop, StepReport, pick_device, sequence_batches
from training.model import GPT, build_model, count_parameters, preset
from training.moments import Moments, as_records, from_records, median_moments, seeded_adamw, unit_moments
from training.outer import make_outer_optimizer

__all__ = ["INNER_STATES", "MODES", "SimConfig", "SimResult", "evaluate", "simulate"]

MODES = ("diloco", "data_parallel", "single")
INNER_STATES = ("fresh", "persistent", "volunteer", "shared")
# A late unit is one version behind; at that staleness the coordinator's weight does not depend on its bound.
_LATE_WEIGHT = staleness_weight(1, 1)
FP32_BYTES = 4


@dataclass(frozen=True)
class SimConfig:
    mode: str = "diloco"
    model: str = "tiny"
    workers: int = 4
    inner_steps: int = 50
    codec: str = "fp32"
    outer: str = "nesterov"
    outer_lr: float | None = None
    outer_momentum: float = 0.9
    steps: int = 400  # inner steps per worker over the whole run
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 3e-3
    warmup: int = 20
    eval_tokens: int = 65536
    eval_every: int = 0  # steps between evaluations outside DiLoCo; 0: ten points over the run
    seed: int = 0
    inner_state: str = "fresh"  # see the module docstring
    volunteers: int = 0  # pool the units are spread over; 0: twice the workers
    late_fraction: float = 0.1  # units trained on the previous version, applied one round late
    download_codec: str = ""  # volunteers fetch each version as a delta in this codec; "": exact weights
    unit_warmup: float = 0.0  # share of a unit's steps its rate ramps over (the campaign spec's inner.unit_warmup)

    def __post_init__(self) -> None:
        problems = []
        if self.mode not in MODES:
            problems.append(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("workers", "inner_steps", "steps", "batch_size", "seq_len", "eval_tokens"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.inner_state not in INNER_STATES:
            problems.append(f"inner_state must be one of {', '.join(INNER_STATES)}, got {self.inner_state!r}")
        if self.volunteers and self.volunteers < self.workers:
            problems.append(f"volunteers ({self.volunteers}) can't be fewer than workers ({self.workers})")
        if not 0.0 <= self.unit_warmup <= 1.0:
            problems.append(f"unit_warmup must be in [0, 1], got {self.unit_warmup}")
        if not 0.0 <= self.late_fraction < 1.0:
            problems.append(f"late_fraction must be in [0, 1), got {self.late_fraction}")
        if self.download_codec:
            try:
                CodecConfig.from_name(self.download_codec)
            except ValueError as error:
                problems.append(f"download_codec: {error}")
        if problems:
            raise ValueError("invalid simulation: " + "; ".join(problems))

    @property
    def pool(self) -> int:
        """Volunteers the units are spread over."""
        return self.volunteers or 2 * self.workers

    @property
    def label(self) -> str:
        if self.mode == "diloco":
            extra = "" if self.inner_state == "fresh" else f", {self.inner_state} AdamW"
            if (self.pool, self.late_fraction) != (2 * self.workers, 0.1):
                extra += f", {self.pool} volunteers, {self.late_fraction:.0%} late"
            if self.download_codec:
                extra += f", {self.download_codec} downloads"
            if self.unit_warmup:
                extra += f", unit warm-up {self.unit_warmup:g}"
            if self.outer_lr is not None:
                extra += f", outer lr {self.outer_lr:g}"
            if self.outer_momentum != SimConfig.outer_momentum:
                extra += f", momentum {self.outer_momentum:g}"
            if self.lr != SimConfig.lr:
                extra += f", inner lr {self.lr:g}"
            return f"DiLoCo H={self.inner_steps} {self.codec} ({self.outer}{extra})"
        return {"data_parallel": "data-parallel", "single": "single worker"}[self.mode]

    def inner_config(self, *, steps: int, schedule_steps: int, warmup: int) -> InnerConfig:
        return InnerConfig(
            steps=steps,
            batch_size=self.batch_size,
            seq_len=self.seq_len,
            lr=self.lr,
            warmup_steps=warmup,
            total_steps=schedule_steps,
        )


@dataclass
class SimResult:
    label: str
    config: dict[str, object]
    parameters: int
    holdout_curve: list[tuple[int, float]]  # (tokens trained in total, holdout loss)
    train_losses: list[float]
    final_holdout_loss: float
    bytes_per_worker: int
    data_parallel_bytes_per_worker: int
    tokens: int
    seconds: float
    outer_steps: int = 0
    epochs: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def reduction(self) -> float:
        """How many times fewer bytes than data-parallel; inf when nothing was sent."""
        if self.bytes_per_worker == 0:
            return math.inf
        return self.data_parallel_bytes_per_worker / self.bytes_per_worker

    def to_dict(self) -> dict[str, object]:
        out = dataclasses.asdict(self)
        out["reduction"] = None if math.isinf(self.reduction) else self.reduction
        return out


class Streams:
    """Worker k's training tokens: the k-th of K partitions, read step by step, wrapping around.

    Step s of worker k always reads the same window, whatever H the run uses, so every mode and
    every configuration trains on exactly the same text.
    """

    def __init__(self, dataset: TokenDataset, workers: int, batch_size: int, seq_len: int) -> None:
        self.dataset = dataset
        self.partition = dataset.num_train_tokens // workers
        self.batch_size, self.seq_len = batch_size, seq_len
        tokens_per_step = self.tokens_per_step = batch_size * seq_len
        if self.partition < 2 * tokens_per_step + 1:
            raise ValueError(
                f"the dataset has {dataset.num_train_tokens} training tokens, too few for {workers} workers "
                f"at {tokens_per_step} tokens per step; prepare a larger corpus or shrink the batch"
            )
        self.furthest = 0

    def batches(self, worker: int, first_step: int, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, targets) of steps first_step … first_step + steps − 1, one batch per step."""
        out: list[tuple[torch.Tensor, torch.Tensor]] = []
        span = self.tokens_per_step + 1
        for step in range(first_step, first_step + steps):
            offset = (step * self.tokens_per_step) % (self.partition - span + 1)
            window = self.dataset.train_slice(worker * self.partition + offset, span)
            out += sequence_batches(window, self.batch_size, self.seq_len)
        self.furthest = max(self.furthest, (first_step + steps) * self.tokens_per_step)
        return out

    @property
    def epochs(self) -> float:
        return self.furthest / self.partition


def simulate(
    config: SimConfig,
    dataset: TokenDataset,
    *,
    device: torch.device | None = None,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> SimResult:
    """Run one configuration to the end; `on_progress(done, total, status)` after each inner step."""
    require_holdout(dataset, config)
    device = device or torch.device("cpu")
    model_config = preset(config.model, vocab_size=dataset.vocab_size, max_seq_len=config.seq_len)
    model = build_model(model_config, seed=config.seed, device=device)
    holdout = dataset.holdout_slice(0, min(config.eval_tokens + 1, dataset.num_holdout_tokens))
    streams = Streams(dataset, config.workers, config.batch_size, config.seq_len)
    runner = {"diloco": _run_diloco, "data_parallel": _run_data_parallel, "single": _run_single}[config.mode]
    began = time.perf_counter()
    result = runner(config, model, streams, holdout, on_progress or (lambda done, total, status: None))
    result.seconds = time.perf_counter() - began
    result.epochs = streams.epochs
    return result


def require_holdout(dataset: TokenDataset, config: SimConfig) -> None:
    """DataError("no_holdout") unless the dataset has holdout tokens for one evaluation batch."""
    needed = config.batch_size * config.seq_len + 1
    if dataset.num_holdout_tokens < needed:
        raise DataError(
            "no_holdout",
            f"the dataset has {dataset.num_holdout_tokens} holdout tokens; measuring holdout loss needs at least "
            f"{needed} (one batch of {config.batch_size} × {config.seq_len}). Prepare it again with a holdout "
            "fraction above 0 or more text, or lower --batch-size or --seq-len.",
        )


def _blank_result(config: SimConfig, model: GPT) -> SimResult:
    parameters = count_parameters(model)
    return SimResult(
        label=config.label,
        config=dataclasses.asdict(config),
        parameters=parameters,
        holdout_curve=[],
        train_losses=[],
        final_holdout_loss=math.nan,
        bytes_per_worker=0,
        # Synchronous data-parallel sends an fp32 gradient of every parameter after every step.
        data_parallel_bytes_per_worker=config.steps * parameters * FP32_BYTES,
        tokens=0,
        seconds=0.0,
    )


def _eval_point(result: SimResult, config: SimConfig, model: GPT, holdout: np.ndarray) -> float:
    loss = evaluate(model, holdout, batch_size=config.batch_size, seq_len=config.seq_len)
    result.holdout_curve.append((result.tokens, loss))
    result.final_holdout_loss = loss
    return loss


def _run_diloco(
    config: SimConfig,
    model: GPT,
    streams: Streams,
    holdout: np.ndarray,
    progress: Callable[[int, int, str], None],
) -> SimResult:
    result = _blank_result(config, model)
    codec = CodecConfig.from_name(config.codec)
    outer = make_outer_optimizer(config.outer, lr=config.outer_lr, momentum=config.outer_momentum)
    global_params: dict[str, torch.Tensor] = dict(model.named_parameters())
    specs = {name: TensorSpec(tuple(p.shape)) for name, p in global_params.items()}
    shapes = {name: spec.shape for name, spec in specs.items()}
    accumulator = DeltaAccumulator({name: spec.shape for name, spec in specs.items()})
    device = next(model.parameters()).device
    # Who trains what: slot k of every round reads worker k's stream; the volunteer doing it is drawn
    # from the pool each round (a pool as large as the workers keeps volunteer k on slot k).
    draw = np.random.default_rng(config.seed + 7919)
    replicas: dict[int, GPT] = {}
    optimizers: dict[int, torch.optim.AdamW] = {}
    feedback: dict[int, ErrorFeedback] = {}
    uploaded: dict[int, int] = {}
    shared: Moments = {}  # the previous round's median second moment (inner_state="shared")
    previous: dict[str, torch.Tensor] | None = None  # θ_{v-1}, which late units started from
    # Compressed downloads: volunteers hold θ'_v, rebuilt from deltas; the coordinator keeps the exact θ_v
    # and sends θ_{v+1} − θ'_v, so what a delta loses is sent again with the next one (error feedback).
    download = CodecConfig.from_name(config.download_codec) if config.download_codec else None
    published = {name: p.detach().clone() for name, p in global_params.items()}
    served = build_model(model.config, seed=config.seed, device=device) if download else model
    _eval_point(result, config, served, holdout)
    total = config.steps * config.workers
    done, step, downloaded = 0, 0, 0
    while step < config.steps:
        steps = min(config.inner_steps, config.steps - step)
        inner = dataclasses.replace(
            config.inner_config(steps=steps, schedule_steps=config.steps, warmup=config.warmup),
            unit_warmup_steps=round(config.unit_warmup * config.inner_steps),
        )
        volunteers = (
            list(range(config.workers))
            if config.pool == config.workers
            else [int(v) for v in draw.choice(config.pool, size=config.workers, replace=False)]
        )
        late = [previous is not None and draw.random() < config.late_fraction for _ in volunteers]
        current = {name: published.get(name, value).detach().clone() for name, value in model.state_dict().items()}
        round_losses: list[list[float]] = []
        round_moments: list[Moments] = []
        for k, volunteer in enumerate(volunteers):
            # DiLoCo's worker k keeps its state; otherwise a model (and its AdamW) follows the volunteer.
            owner = k if config.inner_state == "persistent" else volunteer
            replica = replicas.get(owner)
            if replica is None:
                replica = replicas[owner] = build_model(model.config, seed=config.seed, device=device)
            start = previous if late[k] and previous is not None else current
            replica.load_state_dict(start)
            kept = optimizers.get(owner) if config.inner_state in ("persistent", "volunteer") else None
            if config.inner_state == "shared" and shared:
                kept = seeded_adamw(dict(replica.named_parameters()), inner, shared)
            # A late unit trained a round ago, on the schedule of its own version.
            first = step - steps if late[k] else step
            loop = InnerLoop(replica, inner, global_step=max(0, first), optimizer=kept)
            if config.inner_state in ("persistent", "volunteer"):
                optimizers[owner] = loop.optimizer

            def report(_: object, k: int = k) -> None:
                nonlocal done
                done += 1
                progress(done, total, f"round {result.outer_steps + 1} unit {k + 1}")

            unit = loop.run_batches(streams.batches(k, step, steps), on_step=report)
            residual = feedback.setdefault(volunteer, ErrorFeedback())
            to_send = residual.compensate(unit.delta)
            payload = encode(to_send, codec)
            uploaded[volunteer] = uploaded.get(volunteer, 0) + len(payload)
            received = decode(payload, specs)
            residual.remember(to_send, received)
            accumulator.add(received, weight=unit.tokens * (_LATE_WEIGHT if late[k] else 1.0))
            round_losses.append(unit.losses)
            if config.inner_state == "shared":
                # As volunteers send them: a moments frame (bf16 factors), counted as upload.
                frame = encode_moments(as_records(unit_moments(loop)))
                round_moments.append(from_records(decode_moments(frame, shapes), shapes))
                uploaded[volunteer] += len(frame)
            result.tokens += unit.tokens
        if round_moments:
            shared = median_moments(round_moments)
        outer.step(global_params, accumulator.mean())
        accumulator.reset()
        if download is None:
            published = {name: p.detach().clone() for name, p in global_params.items()}
        else:
            payload = encode({name: p.detach() - published[name] for name, p in global_params.items()}, download)
            for name, value in decode(payload, specs).items():
                published[name] += value
            downloaded += len(payload) * config.workers
            served.load_state_dict(published, strict=False)
        previous = current
        result.outer_steps += 1
        result.train_losses.extend(float(np.mean(col)) for col in zip(*round_losses, strict=True))
        step += steps
        loss = _eval_point(result, config, served, holdout)
        progress(done, total, f"outer step {result.outer_steps}: holdout loss {loss:.3f}")
    # Bytes per worker slot: what all volunteers sent, over the K slots (a pool spreads it unevenly).
    result.bytes_per_worker = math.ceil(sum(uploaded.values()) / config.workers)
    if download is not None:
        # A unit fetches one delta: that of the version it starts from.
        result.extra["download_bytes_per_unit"] = downloaded / max(1, config.workers * result.outer_steps)
    return result


def _eval_steps(config: SimConfig, steps: int) -> int:
    return config.eval_every or max(1, steps // 10)


def _run_data_parallel(
    config: SimConfig,
    model: GPT,
    streams: Streams,
    holdout: np.ndarray,
    progress: Callable[[int, int, str], None],
) -> SimResult:
    # K micro-batches per step, averaged: exactly the mean of the K workers' gradients.
    inner = dataclasses.replace(
        config.inner_config(steps=config.steps, schedule_steps=config.steps, warmup=config.warmup),
        grad_accum=config.workers,
    )
    result = _run_sequential(config, model, streams, holdout, progress, inner, "data-parallel")
    result.bytes_per_worker = result.data_parallel_bytes_per_worker
    return result


def _run_single(
    config: SimConfig,
    model: GPT,
    streams: Streams,
    holdout: np.ndarray,
    progress: Callable[[int, int, str], None],
) -> SimResult:
    steps = config.steps * config.workers
    inner = config.inner_config(steps=steps, schedule_steps=steps, warmup=config.warmup * config.workers)
    return _run_sequential(config, model, streams, holdout, progress, inner, "single worker")


def _run_sequential(
    config: SimConfig,
    model: GPT,
    streams: Streams,
    holdout: np.ndarray,
    progress: Callable[[int, int, str], None],
    inner: InnerConfig,
    status: str,
) -> SimResult:
    """One AdamW run over every worker's batches, step by step: worker 0's, worker 1's, …"""
    result = _blank_result(config, model)
    per_worker = [streams.batches(k, 0, config.steps) for k in range(config.workers)]
    micro = [batch for step in zip(*per_worker, strict=True) for batch in step]
    loop = InnerLoop(model, inner, global_step=0)
    every = _eval_steps(config, inner.steps)
    _eval_point(result, config, model, holdout)
    scale = config.workers * config.steps // inner.steps  # worker-steps per step, for the progress bar

    def report(step: StepReport) -> None:
        result.tokens = step.tokens
        result.train_losses.append(step.loss)
        progress(step.step * scale, config.workers * config.steps, status)
        if step.step % every == 0 or step.step == inner.steps:
            _eval_point(result, config, model, holdout)

    loop.run_batches(micro, on_step=report)
    return result


def load_dataset(path: Path | None, *, quiet: bool) -> TokenDataset:
    """The prepared dataset at `path`, or the embedded corpus (prepared on first use)."""
    return TokenDataset.open(path if path is not None else ensure_default_dataset(progress=not quiet))


def config_from_args(args: argparse.Namespace, **overrides: object) -> SimConfig:
    values: dict[str, object] = {
        "model": args.model,
        "workers": args.workers,
        "inner_steps": args.inner_steps,
        "codec": args.codec,
        "outer": args.outer,
        "outer_lr": args.outer_lr,
        "outer_momentum": args.outer_momentum,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "lr": args.lr,
        "warmup": args.warmup,
        "eval_tokens": args.eval_tokens,
        "seed": args.seed,
        "inner_state": args.inner_state,
        "volunteers": args.volunteers,
        "late_fraction": args.late_fraction,
        "download_codec": args.download_codec,
        "unit_warmup": args.unit_warmup,
    }
    values.update(overrides)
    return SimConfig(**values)  # type: ignore[arg-type]


def run_simulate_command(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from training.progress import progress_bar

    console = Console()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = config_from_args(args)
        CodecConfig.from_name(config.codec)
        device = pick_device(args.device)
        dataset = load_dataset(args.data, quiet=args.quiet)
        require_holdout(dataset, config)
    except (ValueError, OSError) as error:
        print(f"commonweights simulate: {error}", file=sys.stderr)
        return 2
    with progress_bar(config.label, quiet=args.quiet, console=console) as update:
        result = simulate(config, dataset, device=device, on_progress=update)
    table = Table(title=f"{config.label}: {config.workers} workers, {config.steps} steps each")
    for column in ("outer step", "tokens", "holdout loss"):
        table.add_column(column, justify="right")
    for i, (tokens, loss) in enumerate(result.holdout_curve):
        table.add_row(str(i), f"{tokens:,}", f"{loss:.4f}")
    console.print(table)
    console.print(
        f"model {config.model} ({result.parameters:,} parameters), {result.tokens:,} tokens in "
        f"{result.seconds:.1f} s; holdout loss {result.holdout_curve[0][1]:.3f} → {result.final_holdout_loss:.3f}; "
        f"uploaded {result.bytes_per_worker:,} bytes per worker vs {result.data_parallel_bytes_per_worker:,} "
        f"for data-parallel ({result.reduction:,.0f}× less)"
    )
    if args.json is not None:
        args.json.write_text(json.dumps({"results": [result.to_dict()]}, indent=2) + "\n")
    return 0
