"""Outer optimizers: how the coordinator turns the round's averaged pseudo-gradient into θ_{v+1}.

Small strategies behind one interface, the way Flower plugs in aggregation strategies:

    >>> outer = make_outer_optimizer("nesterov")          # DiLoCo: lr 0.7, momentum 0.9
    >>> outer.step(params, mean_delta)                     # params updated in place

`mean_delta` may cover only some of the parameters (a round whose units trained a subset of the
model); parameters without an update are left alone and keep their optimizer state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from typing import Any, Protocol

import torch

__all__ = [
    "OUTER_DEFAULTS",
    "AdamOuter",
    "AveragingOuter",
    "NesterovOuter",
    "OuterOptimizer",
    "make_outer_optimizer",
]

Params = MutableMapping[str, torch.Tensor]


class OuterOptimizer(Protocol):
    name: str

    def step(self, params: Params, delta: Mapping[str, torch.Tensor]) -> None:
        """Apply the averaged pseudo-gradient `delta` (θ_start − θ_end) to `params` in place."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class AveragingOuter:
    """θ ← θ − lr·Δ; with lr 1.0 this is plain model averaging (FedAvg)."""

    name = "average"

    def __init__(self, lr: float = 1.0) -> None:
        self.lr = lr

    @torch.no_grad()
    def step(self, params: Params, delta: Mapping[str, torch.Tensor]) -> None:
        for name, d in delta.items():
            if self.lr == 1.0:
                params[name].sub_(d)  # exactly θ_end for a single contribution: no rounding from lr
            else:
                params[name].sub_(d, alpha=self.lr)

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.lr = float(state["lr"])


class NesterovOuter:
    """SGD with Nesterov momentum on Δ, as in DiLoCo (arXiv 2311.08105): lr 0.7, momentum 0.9."""

    name = "nesterov"

    def __init__(self, lr: float = 0.7, momentum: float = 0.9) -> None:
        self.lr = lr
        self.momentum = momentum
        self.buffers: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, params: Params, delta: Mapping[str, torch.Tensor]) -> None:
        for name, d in delta.items():
            buf = self.buffers.get(name)
            if buf is None:
                buf = self.buffers[name] = d.detach().clone()
            else:
                buf.mul_(self.momentum).add_(d)
            params[name].sub_(d + self.momentum * buf, alpha=self.lr)

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "momentum": self.momentum, "buffers": dict(self.buffers)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.lr = float(state["lr"])
        self.momentum = float(state["momentum"])
        self.buffers = {k: v.clone() for k, v in state["buffers"].items()}


class AdamOuter:
    """Adam on Δ (an adaptive outer optimizer; cf. FedAdam): per-coordinate normalised steps."""

    name = "adam"

    def __init__(self, lr: float = 3e-3, beta1: float = 0.9, beta2: float = 0.95, eps: float = 1e-8) -> None:
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.exp_avg: dict[str, torch.Tensor] = {}
        self.exp_avg_sq: dict[str, torch.Tensor] = {}
        self.steps: dict[str, int] = {}

    @torch.no_grad()
    def step(self, params: Params, delta: Mapping[str, torch.Tensor]) -> None:
        for name, d in delta.items():
            m = self.exp_avg.setdefault(name, torch.zeros_like(d))
            v = self.exp_avg_sq.setdefault(name, torch.zeros_like(d))
            t = self.steps[name] = self.steps.get(name, 0) + 1
            m.mul_(self.beta1).add_(d, alpha=1 - self.beta1)
            v.mul_(self.beta2).addcmul_(d, d, value=1 - self.beta2)
            m_hat = m / (1 - self.beta1**t)
            denom = (v / (1 - self.beta2**t)).sqrt_().add_(self.eps)
            params[name].sub_(m_hat / denom, alpha=self.lr)

    def state_dict(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "betas": [self.beta1, self.beta2],
            "eps": self.eps,
            "exp_avg": dict(self.exp_avg),
            "exp_avg_sq": dict(self.exp_avg_sq),
            "steps": dict(self.steps),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.lr, self.eps = float(state["lr"]), float(state["eps"])
        self.beta1, self.beta2 = (float(b) for b in state["betas"])
        self.exp_avg = {k: v.clone() for k, v in state["exp_avg"].items()}
        self.exp_avg_sq = {k: v.clone() for k, v in state["exp_avg_sq"].items()}
        self.steps = {k: int(v) for k, v in state["steps"].items()}


OUTER_DEFAULTS: dict[str, dict[str, float]] = {
    "nesterov": {"lr": 0.7, "momentum": 0.9},
    "average": {"lr": 1.0},
    "adam": {"lr": 3e-3},
}


def make_outer_optimizer(name: str, *, lr: float | None = None, momentum: float | None = None) -> OuterOptimizer:
    """The named outer optimizer with its defaults, `lr`/`momentum` overriding where given."""
    if name not in OUTER_DEFAULTS:
        raise ValueError(f"unknown outer optimizer {name!r}; choose one of {', '.join(OUTER_DEFAULTS)}")
    chosen_lr = OUTER_DEFAULTS[name]["lr"] if lr is None else lr
    if not (chosen_lr > 0 and math.isfinite(chosen_lr)):
        raise ValueError(f"the outer learning rate must be a positive number, got {chosen_lr}")
    if name == "nesterov":
        chosen_momentum = OUTER_DEFAULTS[name]["momentum"] if momentum is None else momentum
        if not 0 <= chosen_momentum < 1:
            raise ValueError(f"the outer momentum must be within [0, 1), got {chosen_momentum}")
        return NesterovOuter(chosen_lr, chosen_momentum)
    if name == "average":
        return AveragingOuter(chosen_lr)
    return AdamOuter(chosen_lr)
