"""Campaign specs: what a project lead posts, validated at the edge with every problem listed.

    >>> spec = CampaignSpec.from_toml(Path("campaign.toml").read_text())
    >>> spec.rounds.units_per_round
    4

A spec is TOML (or the same structure as JSON over the REST API):

    name = "stdlib-tiny"
    model = "tiny"              # a preset of training.model.PRESETS
    dataset = "stdlib"          # a prepared dataset the coordinator knows (see `coordinator serve`)
    token_budget = 2_000_000
    seed = 0
    codec = "int8"              # or a table: codec = { name = "topk", topk_fraction = 0.01 }
    shard_plan = "full"         # or "groups:N": split the parameter groups into N shards

    [inner]                     # per work unit: H AdamW steps
    steps = 50
    batch_size = 8
    seq_len = 128
    lr = 3e-3

    [outer]
    optimizer = "nesterov"      # nesterov | average | adam
    lr = 0.7

    [rounds]
    units_per_round = 4
    min_accepted = 3
    deadline_s = 600
    lease_s = 180
    staleness_bound = 2

    [validation]
    replication_rate = 0.1
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from protocol.codecs import CODEC_NAMES, CodecConfig, CodecError
from training.inner import InnerConfig
from training.model import PRESETS
from training.outer import OUTER_DEFAULTS

__all__ = [
    "CampaignSpec",
    "InnerSettings",
    "OuterSettings",
    "RoundSettings",
    "SpecError",
    "ValidationSettings",
]

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class SpecError(ValueError):
    """A campaign spec with problems; `problems` lists every one, each naming its field."""

    code = "invalid_spec"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("the campaign spec has problems: " + "; ".join(problems))


@dataclass(frozen=True)
class InnerSettings:
    steps: int = 50
    batch_size: int = 8
    seq_len: int = 128
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.95

    def problems(self) -> list[str]:
        out = _positive(self, "inner", ("steps", "batch_size", "seq_len", "grad_accum", "lr"))
        if self.steps > 100_000:
            out.append("inner.steps must be at most 100000")
        if self.seq_len > 65_536:
            out.append("inner.seq_len must be at most 65536")
        if not 0 <= self.min_lr_ratio <= 1:
            out.append("inner.min_lr_ratio must be within [0, 1]")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            out.append("inner.warmup_steps, weight_decay and grad_clip must not be negative")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            out.append("inner.beta1 and inner.beta2 must be within [0, 1)")
        return out

    @property
    def tokens_per_unit(self) -> int:
        return self.steps * self.batch_size * self.grad_accum * self.seq_len


@dataclass(frozen=True)
class OuterSettings:
    optimizer: str = "nesterov"
    lr: float | None = None  # None: the optimizer's default (nesterov 0.7, average 1.0, adam 3e-3)
    momentum: float = 0.9

    def problems(self) -> list[str]:
        out = []
        if self.optimizer not in OUTER_DEFAULTS:
            out.append(f"outer.optimizer must be one of {', '.join(OUTER_DEFAULTS)}, got {self.optimizer!r}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            out.append(f"outer.lr must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            out.append(f"outer.momentum must be within [0, 1), got {self.momentum}")
        return out


@dataclass(frozen=True)
class RoundSettings:
    units_per_round: int = 4
    min_accepted: int = 3
    deadline_s: float = 600.0
    lease_s: float = 180.0
    staleness_bound: int = 2

    def problems(self) -> list[str]:
        out = _positive(self, "rounds", ("units_per_round", "min_accepted", "deadline_s", "lease_s"))
        if self.min_accepted > self.units_per_round:
            out.append(
                f"rounds.min_accepted ({self.min_accepted}) can't exceed rounds.units_per_round "
                f"({self.units_per_round})"
            )
        if self.units_per_round > 10_000:
            out.append("rounds.units_per_round must be at most 10000")
        if self.staleness_bound < 0:
            out.append("rounds.staleness_bound must not be negative")
        return out


@dataclass(frozen=True)
class ValidationSettings:
    replication_rate: float = 0.1
    replication_rtol: float = 0.05
    norm_mad_k: float = 6.0
    min_cosine: float = -0.2

    def problems(self) -> list[str]:
        out = []
        if not 0 <= self.replication_rate <= 1:
            out.append(f"validation.replication_rate must be within [0, 1], got {self.replication_rate}")
        if not self.replication_rtol > 0:
            out.append("validation.replication_rtol must be positive")
        if not self.norm_mad_k > 0:
            out.append("validation.norm_mad_k must be positive")
        if not -1 <= self.min_cosine <= 1:
            out.append("validation.min_cosine must be within [-1, 1]")
        return out


@dataclass(frozen=True)
class CampaignSpec:
    name: str
    dataset: str
    model: str = "tiny"
    token_budget: int = 2_000_000
    seed: int = 0
    codec: CodecConfig = field(default_factory=lambda: CodecConfig.from_name("int8"))
    shard_plan: str = "full"
    description: str = ""
    inner: InnerSettings = field(default_factory=InnerSettings)
    outer: OuterSettings = field(default_factory=OuterSettings)
    rounds: RoundSettings = field(default_factory=RoundSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)

    @property
    def shard_count(self) -> int:
        return 1 if self.shard_plan == "full" else int(self.shard_plan.split(":", 1)[1])

    @property
    def total_rounds(self) -> int:
        """Rounds the token budget pays for (at least one)."""
        per_round = self.inner.tokens_per_unit * self.rounds.units_per_round
        return max(1, math.ceil(self.token_budget / per_round))

    @property
    def schedule_steps(self) -> int:
        """Length of the inner learning-rate schedule in global steps: H per round."""
        return self.total_rounds * self.inner.steps

    @property
    def inner_config(self) -> InnerConfig:
        """The training core's recipe for every unit of this campaign (its schedule spans the whole
        budget). The one mapping from the spec's inner settings; the wire's `InnerRecipe` is built
        from this."""
        inner = self.inner
        return InnerConfig(
            steps=inner.steps,
            batch_size=inner.batch_size,
            seq_len=inner.seq_len,
            grad_accum=inner.grad_accum,
            lr=inner.lr,
            min_lr_ratio=inner.min_lr_ratio,
            warmup_steps=inner.warmup_steps,
            total_steps=self.schedule_steps,
            weight_decay=inner.weight_decay,
            grad_clip=inner.grad_clip,
            beta1=inner.beta1,
            beta2=inner.beta2,
        )

    @classmethod
    def from_toml(cls, text: str) -> CampaignSpec:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise SpecError([f"not valid TOML: {error}"]) from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: object) -> CampaignSpec:
        """Build and validate; raises SpecError listing every problem found."""
        if not isinstance(data, dict):
            raise SpecError(["the spec must be a table/object"])
        problems: list[str] = []
        sections: dict[str, Any] = {}
        for key, kind in (
            ("inner", InnerSettings),
            ("outer", OuterSettings),
            ("rounds", RoundSettings),
            ("validation", ValidationSettings),
        ):
            sections[key] = _build(kind, data.get(key, {}), key, problems)
        top = {k: v for k, v in data.items() if k not in sections and k != "codec"}
        codec = _codec(data.get("codec", "int8"), problems)
        values = _fields(CampaignSpec, top, "", problems, skip=frozenset({"codec", *sections}))
        if problems or codec is None:
            raise SpecError(problems or ["codec: invalid"])
        spec = cls(codec=codec, **values, **sections)
        spec_problems = spec.problems()
        if spec_problems:
            raise SpecError(spec_problems)
        return spec

    def problems(self) -> list[str]:
        out: list[str] = []
        if not NAME_PATTERN.fullmatch(self.name):
            out.append("name must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        if self.model not in PRESETS:
            out.append(f"model must be one of {', '.join(PRESETS)}, got {self.model!r}")
        if not self.dataset or len(self.dataset) > 256:
            out.append("dataset must name a prepared dataset")
        if self.token_budget <= 0:
            out.append("token_budget must be positive")
        if not 0 <= self.seed < 2**63:
            out.append("seed must be within [0, 2^63)")
        if self.shard_plan != "full":
            match = re.fullmatch(r"groups:([1-9][0-9]{0,3})", self.shard_plan)
            if match is None:
                out.append(f"shard_plan must be 'full' or 'groups:N', got {self.shard_plan!r}")
        if len(self.description) > 2000:
            out.append("description must be at most 2000 characters")
        for section in (self.inner, self.outer, self.rounds, self.validation):
            out += section.problems()
        if self.model in PRESETS and self.inner.seq_len > PRESETS[self.model].max_seq_len:
            out.append(
                f"inner.seq_len ({self.inner.seq_len}) exceeds the {self.model} preset's context "
                f"({PRESETS[self.model].max_seq_len})"
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["codec"] = self.codec.to_dict()
        if self.outer.lr is None:
            del out["outer"]["lr"]
        return out


def _positive(obj: object, prefix: str, names: tuple[str, ...]) -> list[str]:
    return [
        f"{prefix}.{name} must be positive, got {getattr(obj, name)}" for name in names if not getattr(obj, name) > 0
    ]


def _codec(value: object, problems: list[str]) -> CodecConfig | None:
    try:
        if isinstance(value, str):
            return CodecConfig.from_name(value)
        if isinstance(value, dict):
            return CodecConfig.from_dict(value)
        problems.append(f"codec must be a codec name ({', '.join(CODEC_NAMES)}) or a table")
    except CodecError as error:
        problems.append(f"codec: {error}")
    return None


def _build(kind: type[Any], data: object, prefix: str, problems: list[str]) -> Any:
    if not isinstance(data, dict):
        problems.append(f"{prefix} must be a table")
        return kind()
    return kind(**_fields(kind, data, prefix + ".", problems))


def _fields(
    kind: type[Any], data: dict[str, Any], prefix: str, problems: list[str], skip: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Type-check `data` against the dataclass `kind`'s fields; unknown keys are problems too."""
    hints = typing.get_type_hints(kind)
    known = {f.name for f in dataclasses.fields(kind)} - skip
    values: dict[str, Any] = {}
    for key in sorted(set(data) - known):
        problems.append(f"{prefix}{key}: unknown setting")
    for f in dataclasses.fields(kind):
        if f.name in skip or f.name not in data:
            if f.name not in skip and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{prefix}{f.name}: required")
            continue
        value = data[f.name]
        expected = hints[f.name]
        if _matches(value, expected):
            values[f.name] = float(value) if _is_float(expected) and value is not None else value
        else:
            problems.append(f"{prefix}{f.name}: expected {_describe(expected)}, got {type(value).__name__} {value!r}")
    return values


def _is_float(expected: Any) -> bool:
    return expected is float or (
        typing.get_origin(expected) in (typing.Union, types.UnionType) and float in typing.get_args(expected)
    )


def _matches(value: object, expected: Any) -> bool:
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _describe(expected: Any) -> str:
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(expected))
    return {int: "an integer", float: "a number", str: "a string", type(None): "nothing"}.get(expected, str(expected))
