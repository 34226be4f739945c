"""The inner loop a volunteer runs on one work unit: H steps of AdamW on a data slice.

    >>> loop = InnerLoop(model, InnerConfig(steps=4, batch_size=2, seq_len=32), global_step=0)
    >>> result = loop.run(tokens)          # tokens: at least config.tokens_needed ids
    >>> result.delta["embed.weight"]       # θ_start − θ_end, fp32 on the CPU

Each step accumulates gradients over `grad_accum` micro-batches (the token budget of a step), clips
them, and takes an AdamW step whose learning rate follows a warmup + cosine schedule driven by the
campaign's global step, so every volunteer's unit lands on the same point of one schedule. The loop
can stop at any step boundary and resume from `state_dict()`, which is how a paused or rebooted
volunteer keeps its work.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from training.model import GPT

__all__ = [
    "InnerConfig",
    "InnerLoop",
    "InnerResult",
    "StepReport",
    "autocast_for",
    "learning_rate",
    "pick_device",
    "sequence_batches",
    "unit_batches",
    "unit_learning_rate",
]


@dataclass(frozen=True)
class InnerConfig:
    steps: int
    batch_size: int
    seq_len: int
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 0
    total_steps: int = 0  # length of the cosine schedule in global steps; 0: constant after warmup
    unit_warmup_steps: int = 0  # each unit ramps its rate over its own first steps (a fresh AdamW's moments)
    shared_moments: bool = False  # AdamW's v starts from the campaign's shared second moment (training.moments)
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be positive, got {getattr(self, name)}"
            for name in ("steps", "batch_size", "seq_len", "grad_accum")
            if getattr(self, name) <= 0
        ]
        if not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"min_lr_ratio must be within [0, 1], got {self.min_lr_ratio}")
        if self.unit_warmup_steps < 0:
            problems.append(f"unit_warmup_steps can't be negative, got {self.unit_warmup_steps}")
        if self.warmup_steps < 0 or self.total_steps < 0:
            problems.append("warmup_steps and total_steps must not be negative")
        if self.weight_decay < 0 or self.grad_clip < 0:
            problems.append("weight_decay and grad_clip must not be negative")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            problems.append("beta1 and beta2 must be within [0, 1)")
        if problems:
            raise ValueError("invalid inner-loop config: " + "; ".join(problems))

    @property
    def sequences_per_step(self) -> int:
        return self.batch_size * self.grad_accum

    @property
    def tokens_per_step(self) -> int:
        return self.sequences_per_step * self.seq_len

    @property
    def tokens_needed(self) -> int:
        """Length of the data slice for a whole unit: each sequence needs one extra target token."""
        return self.steps * self.tokens_per_step + 1


def learning_rate(config: InnerConfig, global_step: int) -> float:
    """Linear warmup to `lr`, then cosine decay to `lr * min_lr_ratio` at `total_steps`."""
    if global_step < config.warmup_steps:
        return config.lr * (global_step + 1) / config.warmup_steps
    if config.total_steps <= config.warmup_steps:
        return config.lr
    progress = min(1.0, (global_step - config.warmup_steps) / (config.total_steps - config.warmup_steps))
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def unit_learning_rate(config: InnerConfig, first_step: int, step: int) -> float:
    """The rate of a unit's inner step `step` (from 0) when its first step is global step `first_step`:
    the campaign's schedule, times a linear ramp over the unit's first `unit_warmup_steps` steps."""
    rate = learning_rate(config, first_step + step)
    if step < config.unit_warmup_steps:
        rate *= (step + 1) / config.unit_warmup_steps
    return rate


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA, then MPS, then CPU; an explicit request that this machine can't serve is an error."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but no CUDA device is available; use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("MPS was requested but this machine has no Metal device; use --device cpu or auto")
    return device


def autocast_for(device: torch.device) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA; fp32 elsewhere (MPS fp16 would need loss scaling for little gain here)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def sequence_batches(
    tokens: np.ndarray | torch.Tensor, batch_size: int, seq_len: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive non-overlapping (inputs, targets) batches of shape (batch_size, seq_len)."""
    ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    span = batch_size * seq_len
    for start in range(0, ids.numel() - span, span):
        window = ids[start : start + span + 1]
        yield window[:-1].view(batch_size, seq_len), window[1:].view(batch_size, seq_len)


def unit_batches(tokens: np.ndarray | torch.Tensor, config: InnerConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A unit's `steps * grad_accum` micro-batches, step-major, from a slice of at least `tokens_needed` ids."""
    if len(tokens) < config.tokens_needed:
        raise ValueError(f"the data slice has {len(tokens)} tokens; the unit needs {config.tokens_needed}")
    return list(sequence_batches(tokens[: config.tokens_needed], config.batch_size, config.seq_len))


@dataclass(frozen=True)
class StepReport:
    step: int  # steps done in this unit, 1-based
    steps_total: int
    loss: float
    lr: float
    tokens: int  # tokens trained in this unit so far


@dataclass
class InnerResult:
    delta: dict[str, torch.Tensor]
    losses: list[float]
    tokens: int
    seconds: float
    finished: bool = True
    extra: dict[str, float] = field(default_factory=dict)


class InnerLoop:
    """Trains `model` in place on one work unit; only `trainable` parameters move."""

    def __init__(
        self,
        model: GPT,
        config: InnerConfig,
        *,
        global_step: int,
        trainable: Collection[str] | None = None,
        optimizer: torch.optim.AdamW | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.global_step = global_step
        self.device = next(model.parameters()).device
        names = dict(model.named_parameters())
        selected = list(names) if trainable is None else list(trainable)
        unknown = [n for n in selected if n not in names]
        if unknown:
            raise ValueError(f"unknown parameters in the shard: {', '.join(unknown[:5])}")
        self.trainable = selected
        chosen = set(selected)
        for name, param in names.items():
            param.requires_grad_(name in chosen)
        self.params = [names[n] for n in selected]
        self.start = {n: names[n].detach().to("cpu", torch.float32, copy=True) for n in selected}
        # A worker that keeps its optimizer across units (the simulator; DiLoCo's workers) passes it
        # in; a volunteer starts each unit fresh or from its local checkpoint.
        self.optimizer = optimizer or torch.optim.AdamW(
            self.params,
            lr=config.lr,
            betas=(config.beta1, config.beta2),
            eps=config.eps,
            weight_decay=config.weight_decay,
        )
        self.step = 0
        self.losses: list[float] = []
        self.seconds = 0.0

    def run(
        self,
        tokens: np.ndarray | torch.Tensor,
        *,
        on_step: Callable[[StepReport], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> InnerResult:
        """Train on a contiguous data slice of at least `config.tokens_needed` token ids."""
        return self.run_batches(unit_batches(tokens, self.config), on_step=on_step, should_stop=should_stop)

    def run_batches(
        self,
        micro: Sequence[tuple[torch.Tensor, torch.Tensor]],
        *,
        on_step: Callable[[StepReport], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> InnerResult:
        """Train until the unit's H steps are done or `should_stop()` says so at a step boundary.

        `micro` holds `steps * grad_accum` (inputs, targets) micro-batches, step-major.
        """
        config = self.config
        if len(micro) < config.steps * config.grad_accum:
            raise ValueError(f"{len(micro)} micro-batches for {config.steps} steps of {config.grad_accum}")
        self.model.train()
        while self.step < config.steps:
            if should_stop is not None and should_stop():
                return self.result(finished=False)
            began = time.perf_counter()
            lr = unit_learning_rate(config, self.global_step, self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss = self._accumulate(micro[self.step * config.grad_accum : (self.step + 1) * config.grad_accum])
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, config.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.losses.append(loss)
            self.seconds += time.perf_counter() - began
            if on_step is not None:
                on_step(StepReport(self.step, config.steps, loss, lr, self.step * config.tokens_per_step))
        return self.result(finished=True)

    def _accumulate(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
        total = 0.0
        for inputs, targets in batches:
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            with autocast_for(self.device):
                loss = self.model.loss(inputs, targets) / len(batches)
            loss.backward()  # type: ignore[no-untyped-call]
            total += loss.item()
        if not math.isfinite(total):
            raise FloatingPointError(f"training diverged: loss {total} at step {self.step + 1}")
        return total

    def delta(self) -> dict[str, torch.Tensor]:
        """The pseudo-gradient θ_start − θ_now of the trained shard, fp32 on the CPU."""
        current = dict(self.model.named_parameters())
        return {n: self.start[n] - current[n].detach().to("cpu", torch.float32) for n in self.trainable}

    def result(self, *, finished: bool) -> InnerResult:
        return InnerResult(
            delta=self.delta(),
            losses=list(self.losses),
            tokens=self.step * self.config.tokens_per_step,
            seconds=self.seconds,
            finished=finished,
        )

    def state_dict(self) -> dict[str, Any]:
        """What a local checkpoint needs to resume this unit: weights, optimizer, progress."""
        current = dict(self.model.named_parameters())
        return {
            "step": self.step,
            "losses": list(self.losses),
            "seconds": self.seconds,
            "start": self.start,
            "params": {n: current[n].detach().to("cpu", copy=True) for n in self.trainable},
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if sorted(state["params"]) != sorted(self.trainable):
            raise ValueError("the checkpoint is for a different model shard")
        current = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in state["params"].items():
                current[name].copy_(value)
        self.start = {n: t.to(torch.float32) for n, t in state["start"].items()}
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.losses = [float(x) for x in state["losses"]]
        self.seconds = float(state["seconds"])
