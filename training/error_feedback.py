"""Error feedback for lossy codecs, kept per worker.

What a codec drops from one update is carried into the next, so compression errors don't
accumulate into a bias (cf. DeMo, arXiv 2411.19870; EF21). The residual is optimizer state of the
worker and never leaves it.

    >>> feedback = ErrorFeedback()
    >>> to_send = feedback.compensate(delta)          # delta + what was lost last time
    >>> decoded = decode(encode(to_send, config), specs)
    >>> feedback.remember(to_send, decoded)           # lost = to_send − decoded
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["ErrorFeedback"]


class ErrorFeedback:
    def __init__(self) -> None:
        self.residual: dict[str, torch.Tensor] = {}

    def compensate(self, delta: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: d + self.residual[name] if name in self.residual else d.clone() for name, d in delta.items()}

    def remember(self, sent: Mapping[str, torch.Tensor], decoded: Mapping[str, torch.Tensor]) -> None:
        for name, value in sent.items():
            self.residual[name] = value - decoded[name]

    def reset(self) -> None:
        self.residual.clear()
