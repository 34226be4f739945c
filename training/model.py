"""The GPT-style decoder every campaign trains, its named presets and its parameter groups.

A pre-norm decoder: RoPE, RMSNorm, SwiGLU MLP, tied input/output embeddings and PyTorch's fused
scaled-dot-product attention. Initialisation is deterministic for a seed, so a coordinator and a
volunteer that build the same preset with the same seed hold bit-identical weights.

    >>> config = preset("tiny", vocab_size=512)
    >>> model = build_model(config, seed=0)
    >>> logits = model(torch.zeros(2, 16, dtype=torch.long))
    >>> tuple(logits.shape)
    (2, 16, 512)

Parameter groups (`parameter_groups`) name the unit of model sharding: "embed", "block.0" …
"block.{n-1}" and "norm". A work unit trains a subset of groups and freezes the rest.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GPT",
    "PRESETS",
    "ModelConfig",
    "build_model",
    "count_parameters",
    "parameter_groups",
    "preset",
]


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    d_model: int
    n_layer: int
    n_head: int
    d_ff: int
    max_seq_len: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        problems = []
        for name in ("vocab_size", "d_model", "n_layer", "n_head", "d_ff", "max_seq_len"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_head > 0 and self.d_model % self.n_head:
            problems.append(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        elif self.n_head > 0 and (self.d_model // self.n_head) % 2:
            problems.append("the head dimension d_model/n_head must be even for RoPE")
        if not (self.rope_theta > 0 and self.norm_eps > 0):
            problems.append("rope_theta and norm_eps must be positive")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict[str, int | float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, int | float]) -> ModelConfig:
        """Parse the JSON form; ValueError for anything else (it may come from a file or a server)."""
        if not isinstance(values, dict):
            raise ValueError(f"a model config is a JSON object, not {type(values).__name__}")
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = set(values) - set(fields)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        if required - set(values):
            raise ValueError(f"the model config lacks {', '.join(sorted(required - set(values)))}")
        try:
            ints = {k: int(v) for k, v in values.items() if k not in ("rope_theta", "norm_eps")}
            floats = {k: float(v) for k, v in values.items() if k in ("rope_theta", "norm_eps")}
        except (TypeError, ValueError):
            raise ValueError("model config values are numbers") from None
        return cls(**ints, **floats)  # type: ignore[arg-type]


# Sizes are quoted for the default vocabulary; tiny and small are what CPUs train in tests and the
# demo, the larger ones are for real campaigns and must at least build on the meta device here.
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(vocab_size=8192, d_model=96, n_layer=3, n_head=4, d_ff=256, max_seq_len=256),
    "small": ModelConfig(vocab_size=8192, d_model=320, n_layer=6, n_head=5, d_ff=864, max_seq_len=256),
    "125m": ModelConfig(vocab_size=32000, d_model=768, n_layer=12, n_head=12, d_ff=2048, max_seq_len=2048),
    "350m": ModelConfig(vocab_size=32000, d_model=1024, n_layer=24, n_head=16, d_ff=2816, max_seq_len=2048),
    "1b": ModelConfig(vocab_size=32000, d_model=2048, n_layer=20, n_head=32, d_ff=5632, max_seq_len=2048),
}


def preset(name: str, *, vocab_size: int | None = None, max_seq_len: int | None = None) -> ModelConfig:
    """The named preset, with the vocabulary (of the dataset's tokenizer) and context swapped in."""
    try:
        config = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}") from None
    changes: dict[str, int] = {}
    if vocab_size is not None:
        changes["vocab_size"] = vocab_size
    if max_seq_len is not None:
        changes["max_seq_len"] = max_seq_len
    return dataclasses.replace(config, **changes)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 so autocast to half precision doesn't lose the small denominators.
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rope_tables(head_dim: int, seq_len: int, theta: float, device: torch.device) -> torch.Tensor:
    """cos and sin of the rotary angles, stacked: shape (2, seq_len, head_dim // 2)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return torch.stack((angles.cos(), angles.sin()))


def apply_rope(x: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :half], x[..., half:]) of a (batch, heads, seq, head_dim) tensor."""
    cos, sin = tables[0, : x.shape[-2]], tables[1, : x.shape[-2]]
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    rotated = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.type_as(x)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        batch, seq, dim = x.shape
        q, k, v = self.qkv(x).split(dim, dim=2)
        q, k, v = (t.view(batch, seq, self.n_head, dim // self.n_head).transpose(1, 2) for t in (q, k, v))
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        projected: torch.Tensor = self.proj(out.transpose(1, 2).reshape(batch, seq, dim))
        return projected


class SwiGLU(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.up = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.down = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down: torch.Tensor = self.down(F.silu(self.gate(x)) * self.up(x))
        return down


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope)
        out: torch.Tensor = x + self.mlp(self.mlp_norm(x))
        return out


class GPT(nn.Module):
    rope: torch.Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        # The rotary table is derived state, not a parameter: never saved, never trained or sent.
        self.register_buffer(
            "rope",
            rope_tables(config.head_dim, config.max_seq_len, config.rope_theta, self.embed.weight.device),
            persistent=False,
        )

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, seq, vocab) for token ids of shape (batch, seq)."""
        if idx.shape[1] > self.config.max_seq_len:
            raise ValueError(f"sequence length {idx.shape[1]} exceeds max_seq_len {self.config.max_seq_len}")
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x, self.rope)
        return F.linear(self.norm(x), self.embed.weight)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self(idx)
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        """Deterministic init: N(0, 0.02), residual projections scaled by depth (GPT-2 style)."""
        generator = torch.Generator(device="cpu").manual_seed(seed)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, param in self.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
                continue
            std = residual_std if name.endswith(("proj.weight", "down.weight")) else 0.02
            values = torch.randn(param.shape, generator=generator, dtype=torch.float32) * std
            param.copy_(values.to(param.device, param.dtype))


def build_model(config: ModelConfig, *, seed: int = 0, device: str | torch.device = "cpu") -> GPT:
    """A model with deterministic weights for `seed`; on the meta device, shapes only."""
    device = torch.device(device)
    if device.type == "meta":
        with torch.device("meta"):
            return GPT(config)
    model = GPT(config)
    model.reset_parameters(seed)
    return model.to(device)


def parameter_groups(model: GPT) -> dict[str, list[str]]:
    """Group name -> parameter names, in model order: "embed", "block.{i}", "norm"."""
    groups: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        head, _, rest = name.partition(".")
        group = f"block.{rest.partition('.')[0]}" if head == "blocks" else head
        groups.setdefault(group, []).append(name)
    return groups


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
