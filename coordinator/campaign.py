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
    download_codec = "int8"     # how each new version reaches volunteers that hold the previous one
    shard_plan = "full"         # or "groups:N": split the parameter groups into N shards
    license = "apache-2.0"      # the trained model's license, on its model card (exports)
    data_description = "..."    # the data in the lead's words, on the model card

    [inner]                     # per work unit: H AdamW steps
    steps = 50
    batch_size = 8
    seq_len = 128
    lr = 3e-3

    [outer]
    optimizer = "nesterov"      # nesterov | average | adam
    lr = 0.7
    aggregation = "mean"        # mean | trimmed_mean | centered_clip: how the round's updates become one
    trim = 0.2                  # trimmed_mean: the share cut from each end per coordinate
    clip_iterations = 3         # centered_clip: iterations from the coordinate-wise median
    # clip_tau = 0.5            # centered_clip: the clipping radius; omit for the median distance

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

import math
import re
import reprlib
import tomllib
import typing
from collections.abc import Iterable
from typing import Annotated, Any, TypeVar

import msgspec
import msgspec.inspect as mi
from msgspec import Meta

from protocol.codecs import CODEC_NAMES, CodecConfig, CodecError
from protocol.limits import MAX_GRAD_CLIP, MAX_INNER_STEPS
from training.aggregation import AGGREGATION_RULES, AggregationRule
from training.inner import InnerConfig
from training.model import PRESETS
from training.outer import OUTER_DEFAULTS

__all__ = [
    "DEFAULT_CODEC",
    "CampaignSpec",
    "InnerSettings",
    "OuterSettings",
    "PrivacySettings",
    "RoundSettings",
    "SpecError",
    "ValidationSettings",
]

DEFAULT_CODEC = "int8"
DENSE_CODECS = ("fp32", "fp16", "bf16", "int8")  # decoded, they keep every value of the update
DEFAULT_DOWNLOAD_CODEC = "int8"

S = TypeVar("S", bound=msgspec.Struct)


class SpecError(ValueError):
    """A campaign spec with problems; `problems` lists every one, each naming its field."""

    code = "invalid_spec"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("the campaign spec has problems: " + "; ".join(problems))


# Each field's type, bounds, default and description are declared once, below: the spec's checks
# (`problems`) and its JSON Schema (coordinator.openapi) are both read from these declarations.
# Beyond msgspec's own constraints, `Meta.extra_json_schema["enum"]` lists a field's choices and
# `Meta.extra["says"]` words a pattern for the person whose value missed it.
#
# Every number has an upper bound and every text a longest length, since a spec comes from the
# network: bounds far beyond any real campaign that still keep the arithmetic on them (tokens per
# unit × units × rounds, token counts as floats, deadlines as timestamps) exact, inside 64-bit
# integers and the protocol's limits, and what a unit asks of a volunteer's memory finite.

# 60× Llama 3's 15T tokens. Under 2**53: token counts summed or divided as floats stay exact, and the
# schedule's length in steps (at most the budget plus one unit's steps) fits the protocol's integers.
MAX_TOKEN_BUDGET = 10**15
DAY_S = 86_400.0


def _one_of(names: Iterable[str], description: str) -> Meta:
    return Meta(description=description, extra_json_schema={"enum": list(names)})


class InnerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Each work unit: H AdamW steps from the current version."""

    # A unit's recipe travels in `work_unit` frames: no bound here may pass what the protocol's limits
    # refuse. At the bounds a unit's tokens (steps × batch_size × grad_accum × seq_len) stay under 2**53.
    steps: Annotated[int, Meta(ge=1, le=MAX_INNER_STEPS, description="H: AdamW steps per work unit.")] = 50
    batch_size: Annotated[int, Meta(ge=1, le=1024, description="Sequences per micro-batch.")] = 8
    seq_len: Annotated[int, Meta(ge=1, le=65_536, description="At most the model preset's context length.")] = 128
    grad_accum: Annotated[int, Meta(ge=1, le=1024, description="Micro-batches accumulated into each step.")] = 1
    lr: Annotated[float, Meta(gt=0, le=1, description="Peak AdamW learning rate.")] = 3e-3
    min_lr_ratio: Annotated[
        float, Meta(ge=0, le=1, description="Where the cosine schedule ends, as a share of the peak rate.")
    ] = 0.1
    warmup_steps: Annotated[
        int, Meta(ge=0, le=10**9, description="Steps of linear warm-up, counted over the campaign.")
    ] = 20
    weight_decay: Annotated[
        float, Meta(ge=0, le=1, description="AdamW weight decay (decoupled: lr × wd per step).")
    ] = 0.1
    grad_clip: Annotated[
        float, Meta(ge=0, le=MAX_GRAD_CLIP, description="Largest gradient norm; 0 turns clipping off.")
    ] = 1.0
    beta1: Annotated[float, Meta(ge=0, lt=1, description="AdamW's first-moment decay.")] = 0.9
    beta2: Annotated[float, Meta(ge=0, lt=1, description="AdamW's second-moment decay.")] = 0.95
    # Measured (docs/benchmarks.md, what the deployed algorithm costs): every unit starts a fresh AdamW,
    # whose first steps are too large; ramping the rate recovers about half the loss in the simulator.
    # Off by default for now: the evidence checks' thresholds were set for unramped units, and with a
    # ramp they refused honest updates of short units in the coordinator's tests.
    unit_warmup: Annotated[
        float,
        Meta(
            ge=0,
            le=1,
            description="Share of each unit's steps over which its learning rate ramps up (0: none).",
        ),
    ] = 0.0
    # Measured (docs/benchmarks.md, long horizon): seeding each unit's fresh AdamW with the last round's
    # median second moment takes back about two thirds of what restarting AdamW costs, for 5% more upload.
    shared_moments: Annotated[
        bool,
        Meta(
            description=(
                "Units return their AdamW second moment (factored: a row and a column mean per matrix) and start "
                "from the last round's median."
            )
        ),
    ] = True

    def problems(self) -> list[str]:
        return _declared_problems(self, "inner.")

    @property
    def tokens_per_unit(self) -> int:
        return self.steps * self.batch_size * self.grad_accum * self.seq_len


class OuterSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Each round: how the accepted updates move the model."""

    optimizer: Annotated[str, _one_of(OUTER_DEFAULTS, "Applies each round's aggregate update to the model.")] = (
        "nesterov"
    )
    lr: Annotated[
        Annotated[float, Meta(gt=0, le=10)] | None, Meta(description="Omit (or null) for the optimizer's default.")
    ] = None  # None: the optimizer's default (nesterov 0.7, average 1.0, adam 3e-3)
    momentum: Annotated[
        float, Meta(ge=0, lt=1, description="Nesterov's momentum (the other optimizers have none).")
    ] = 0.9
    aggregation: Annotated[
        str,
        _one_of(
            AGGREGATION_RULES,
            "How the round's accepted updates become one: their token-weighted mean, or a robust rule that a "
            "few outlying updates can't steer (coordinate-wise trimmed mean, centered clipping).",
        ),
    ] = "mean"
    trim: Annotated[
        float,
        Meta(
            ge=0,
            lt=0.5,
            description="trimmed_mean: the share of updates cut from each end, per coordinate (floor(trim × n)).",
        ),
    ] = 0.2
    clip_iterations: Annotated[
        int, Meta(ge=1, le=10, description="centered_clip: clipping iterations from the coordinate-wise median.")
    ] = 3
    clip_tau: Annotated[
        Annotated[float, Meta(gt=0, le=1e6)] | None,
        Meta(
            description=(
                "centered_clip: the clipping radius (an L2 norm of one shard's update); omit (or null) for the "
                "median of the updates' distances to the start."
            )
        ),
    ] = None

    def problems(self) -> list[str]:
        return _declared_problems(self, "outer.")

    @property
    def aggregation_rule(self) -> AggregationRule:
        """The training core's rule for combining a round's updates (the one mapping from these settings)."""
        return AggregationRule(self.aggregation, self.trim, self.clip_iterations, self.clip_tau)


class RoundSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """When a round opens, who gets its units and when it closes."""

    units_per_round: Annotated[int, Meta(ge=1, le=10_000, description="Work units handed out per round.")] = 4
    min_accepted: Annotated[int, Meta(ge=1, le=10_000, description="At most rounds.units_per_round.")] = 3
    deadline_s: Annotated[
        float,
        Meta(gt=0, le=30 * DAY_S, description="Seconds until a round closes with what it has (at least one update)."),
    ] = 600.0
    lease_s: Annotated[
        float, Meta(gt=0, le=7 * DAY_S, description="Seconds a volunteer holds a unit before it is reassigned.")
    ] = 180.0
    staleness_bound: Annotated[
        int, Meta(ge=0, le=1000, description="Versions an update's base may lag the current one and still count.")
    ] = 2
    max_leases_per_volunteer: Annotated[
        int, Meta(ge=1, le=64, description="Units one volunteer may hold at once in this campaign.")
    ] = 2
    # Overlapped rounds: without it, once a round's units are all out, volunteers that finish wait for
    # the round to close (the slowest of its min_accepted units) before they get work again.
    overlap: Annotated[
        float,
        Meta(
            ge=0,
            le=4,
            description=(
                "Units handed out beyond units_per_round while the round waits for results, as a share of it: "
                "volunteers that finish early train again from the same version instead of waiting; an update "
                "that arrives after its round closed counts in the next one, down-weighted as late (0: wait)."
            ),
        ),
    ] = 0.0

    @property
    def units_issued(self) -> int:
        """The most units of one round handed out: units_per_round and the overlap's share of it."""
        return self.units_per_round + math.ceil(self.overlap * self.units_per_round)

    def problems(self) -> list[str]:
        out = _declared_problems(self, "rounds.")
        if self.min_accepted > self.units_per_round:
            out.append(
                f"rounds.min_accepted ({self.min_accepted}) can't exceed rounds.units_per_round "
                f"({self.units_per_round})"
            )
        return out


class PrivacySettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A campaign on volunteers' own data (`data = "volunteer"`): what it takes of their files and how
    each update is protected (protocol.md, units on volunteers' own data)."""

    file_kinds: Annotated[
        str,
        Meta(
            pattern=r"^\.[a-z0-9]{1,15}( \.[a-z0-9]{1,15}){0,31}$",
            max_length=544,
            description="File name endings taken, lowercase, separated by spaces: e.g. '.txt .md .jsonl'.",
            extra={"says": "lowercase endings with their dot, separated by one space, such as '.txt .md'"},
        ),
    ] = ".txt .md .jsonl"
    max_file_bytes: Annotated[int, Meta(ge=1, le=1 << 40, description="Files larger than this are left out.")] = (
        64 << 20
    )
    max_total_bytes: Annotated[
        int, Meta(ge=1, le=1 << 40, description="A volunteer's files used hold at most this many bytes in all.")
    ] = 1 << 30
    min_tokens: Annotated[
        int,
        Meta(
            ge=0,
            le=MAX_TOKEN_BUDGET,
            description=(
                "Least training tokens a volunteer's files must hold; never fewer than one unit reads "
                "(the default 0 means exactly that)."
            ),
        ),
    ] = 0
    clip_norm: Annotated[
        float, Meta(gt=0, le=MAX_GRAD_CLIP, description="C: each update's whole L2 norm is clipped to this.")
    ] = 1.0
    noise_multiplier: Annotated[
        float,
        Meta(
            ge=0,
            le=1000,
            description=(
                "z: Gaussian noise of standard deviation z·2C is added to every coordinate of each update on the "
                "volunteer's device (2C: the most replacing all of a volunteer's data can move a clipped update); "
                "0 adds none and promises no privacy."
            ),
        ),
    ] = 1.0
    delta: Annotated[float, Meta(gt=0, lt=1, description="The δ privacy is accounted with.")] = 1e-5
    epsilon_budget: Annotated[
        Annotated[float, Meta(gt=0, le=1e4)] | None,
        Meta(
            description=(
                "The ε a volunteer's updates to this campaign may add up to: neither the coordinator nor the "
                "volunteer's app lets one more update past it. Omitted: no limit (each volunteer still sees what "
                "they spent)."
            ),
        ),
    ] = None

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.file_kinds.split())

    def problems(self) -> list[str]:
        return _declared_problems(self, "privacy.")


class ValidationSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How submitted updates are checked before they count."""

    replication_rate: Annotated[float, Meta(ge=0, le=1, description="Share of units computed twice and compared.")] = (
        0.1
    )
    replication_rtol: Annotated[
        float, Meta(gt=0, le=100, description="Largest relative L2 distance at which two replicas agree.")
    ] = 0.05
    norm_mad_k: Annotated[
        float, Meta(gt=0, le=1e6, description="k: an update's norm may be at most the cohort's median + k·MAD.")
    ] = 6.0
    min_cosine: Annotated[
        float, Meta(ge=-1, le=1, description="Least cosine between an update and the cohort's direction.")
    ] = -0.2
    holdout_check_rate: Annotated[
        float,
        Meta(
            ge=0,
            le=1,
            description=(
                "Share of trusted volunteers' updates measured with the model (first loss, holdout descent, "
                "fit to the unit's data); every update of a volunteer not yet trusted is measured. 0 turns the "
                "measurement off, for campaigns of vetted volunteers and throughput benchmarks."
            ),
        ),
    ] = 0.1
    check_rate: Annotated[
        float,
        Meta(
            ge=0,
            le=1,
            description=(
                "Share of the updates the coordinator does not measure itself that wait for a holdout check by "
                "forward-only volunteers (check units: the holdout loss of the model with a small step along "
                "the update, from two unrelated volunteers who agree), while volunteers who check are "
                "connected. 0 turns check units off."
            ),
        ),
    ] = 0.25

    def problems(self) -> list[str]:
        return _declared_problems(self, "validation.")


class CampaignSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A campaign spec: the JSON form of the TOML that `commonweights campaign post` sends."""

    name: Annotated[
        str,
        Meta(
            pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
            max_length=64,
            description="Unique on this coordinator.",
            extra={"says": "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"},
        ),
    ]
    dataset: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=256,
            description="The name of a dataset this coordinator serves (GET /api/datasets lists them); never a path.",
        ),
    ]
    model: Annotated[str, _one_of(PRESETS, "A model preset.")] = "tiny"
    token_budget: Annotated[
        int,
        Meta(
            ge=1,
            le=MAX_TOKEN_BUDGET,
            description="Training tokens the campaign may spend; it finishes when they are spent.",
        ),
    ] = 2_000_000
    seed: Annotated[
        int, Meta(ge=0, le=2**63 - 1, description="Seeds the initial weights and the data each unit reads.")
    ] = 0
    codec: Annotated[CodecConfig, Meta(description="A codec name, or a table with its name and parameters.")] = (
        msgspec.field(default_factory=lambda: CodecConfig.from_name(DEFAULT_CODEC))
    )
    download_codec: Annotated[
        CodecConfig,
        Meta(
            description=(
                "Codec of the deltas that bring volunteers from one version to the next (protocol.md, checkpoint "
                "deltas); what a lossy one leaves out goes out with the next delta."
            )
        ),
    ] = msgspec.field(default_factory=lambda: CodecConfig.from_name(DEFAULT_DOWNLOAD_CODEC))
    shard_plan: Annotated[
        str,
        Meta(
            pattern=r"^(full|groups:[1-9][0-9]{0,3})$",
            max_length=11,
            description="full, or groups:N to split the parameter groups into N shards, one per unit.",
            extra={"says": "'full' or 'groups:N' (N from 1 to 9999)"},
        ),
    ] = "full"
    description: Annotated[
        str, Meta(max_length=2000, description="What the model is for, shown on the public page.")
    ] = ""
    data_description: Annotated[
        str,
        Meta(
            max_length=2000,
            description="The training data in the lead's words (sources, licenses, filtering); on the model card.",
        ),
    ] = ""
    license: Annotated[
        str,
        Meta(
            pattern=r"^([A-Za-z0-9][A-Za-z0-9.+-]{0,63})?$",
            max_length=64,
            description="The trained model's license (an SPDX or Hugging Face id, e.g. apache-2.0); on the model card.",
            extra={"says": "a license id such as apache-2.0 or cc-by-4.0 (letters, digits, '.', '+', '-')"},
        ),
    ] = ""
    data: Annotated[
        str,
        _one_of(
            ("coordinator", "volunteer"),
            "Where the training text is: coordinator (units carry slices of `dataset`) or volunteer (each "
            "volunteer trains on files of their own, which never leave their device; `dataset` then gives the "
            "tokenizer and the public holdout updates are checked on).",
        ),
    ] = "coordinator"
    inner: InnerSettings = msgspec.field(default_factory=InnerSettings)
    privacy: PrivacySettings = msgspec.field(default_factory=PrivacySettings)
    outer: OuterSettings = msgspec.field(default_factory=OuterSettings)
    rounds: RoundSettings = msgspec.field(default_factory=RoundSettings)
    validation: ValidationSettings = msgspec.field(default_factory=ValidationSettings)

    @property
    def private(self) -> bool:
        """Whether the campaign trains on its volunteers' own files (`data = "volunteer"`)."""
        return self.data == "volunteer"

    @property
    def private_min_tokens(self) -> int:
        """Least training tokens a volunteer's files must hold: the spec's, and at least one unit's."""
        return max(self.privacy.min_tokens, self.inner.tokens_per_unit + 1)

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
            unit_warmup_steps=round(inner.unit_warmup * inner.steps),
            shared_moments=inner.shared_moments,
        )

    @classmethod
    def field_paths(cls) -> frozenset[str]:
        """Every setting a problem can name: `name`, `codec`, `inner`, `inner.steps`, ..."""
        paths = set()
        for f in msgspec.structs.fields(cls):
            paths.add(f.name)
            if _is_section(f.type):
                paths |= {f"{f.name}.{g.name}" for g in msgspec.structs.fields(f.type)}
        return frozenset(paths)

    @classmethod
    def from_toml(cls, text: str) -> CampaignSpec:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise SpecError([f"not valid TOML: {error}"]) from None
        except RecursionError:
            raise SpecError(["not valid TOML: nested deeper than the parser goes"]) from None
        except ValueError:  # the one tomllib doesn't wrap: an integer past Python's 4300 digits
            raise SpecError(["not valid TOML: an integer with thousands of digits"]) from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: object) -> CampaignSpec:
        """Build and validate; raises SpecError listing every problem found.

        Types first, every field of every section: a value of the wrong type stops there, since
        the range and cross-field rules need the values. Then every rule, all problems together."""
        if not isinstance(data, dict):
            raise SpecError(["the spec must be a table/object"])
        problems: list[str] = []
        if data.get("data") == "volunteer" and isinstance(data.get("inner", {}), dict):
            # Shared moments would carry the volunteers' data off their devices: off unless asked for (a problem).
            data = data | {"inner": {"shared_moments": False} | data.get("inner", {})}
        spec = _read(cls, data, "", problems)
        if spec is None:
            raise SpecError(problems)
        spec_problems = spec.problems()
        if spec_problems:
            raise SpecError(spec_problems)
        return spec

    def problems(self) -> list[str]:
        """Every declared bound this spec's values break, then the rules that span fields."""
        out = _declared_problems(self, "")
        for section in (self.inner, self.outer, self.rounds, self.validation, self.privacy):
            out += section.problems()
        if self.private and self.inner.shared_moments:
            out.append(
                "inner.shared_moments can't be true when data is volunteer: a unit's second moments are computed "
                "on the volunteer's data and would leave the device without noise"
            )
        if self.private and self.codec.name not in DENSE_CODECS:
            out.append(
                f"codec {self.codec.name} can't carry a noised update when data is volunteer: the coordinator checks "
                f"the noise on the decoded update, so use one of {', '.join(DENSE_CODECS)}"
            )
        if self.private and 0 < self.privacy.min_tokens < self.inner.tokens_per_unit + 1:
            out.append(
                f"privacy.min_tokens ({self.privacy.min_tokens}) is fewer than one unit reads "
                f"({self.inner.tokens_per_unit + 1}); raise it or leave it 0"
            )
        if self.model in PRESETS and self.inner.seq_len > PRESETS[self.model].max_seq_len:
            out.append(
                f"inner.seq_len ({self.inner.seq_len}) exceeds the {self.model} preset's context "
                f"({PRESETS[self.model].max_seq_len})"
            )
        if self.download_codec.name == "dct":
            out.append(
                "download_codec: dct can't be a delta codec: its inverse transform is a matrix product that "
                "machines round differently, so volunteers couldn't rebuild the checkpoint bit for bit; "
                "use int8, int4, int2 or sign1"
            )
        out += self._aggregation_problems()
        return out

    def _aggregation_problems(self) -> list[str]:
        """A robust rule that a round closing at its quorum could never use: it would be the mean.
        Units go to the shards in turn, so each shard's updates are aggregated apart, about
        min_accepted / shards of them."""
        outer, quorum = self.outer, self.rounds.min_accepted
        if outer.aggregation == "mean" or not 0 <= outer.trim < 0.5:
            return []
        try:
            shards = self.shard_count
        except (IndexError, ValueError):  # a malformed shard_plan, a problem of its own
            return []
        each = quorum // shards
        round_of = f"a round of rounds.min_accepted ({quorum}) updates"
        if shards > 1:
            round_of += f" over {shards} shards ({each} per shard)"
        if outer.aggregation == "trimmed_mean" and math.floor(outer.trim * each + 1e-9) == 0:  # as robust.py counts
            fixes = [f"outer.trim to at least {math.ceil(1000 / each) / 1000:g}"] if each >= 3 else []
            if outer.trim > 0:
                fixes.append(f"rounds.min_accepted to at least {math.ceil(1 / outer.trim - 1e-9) * shards}")
            return [
                f"outer.trim ({outer.trim}) cuts nothing from {round_of}: floor(trim × {each}) is 0, so "
                "trimmed_mean would be the plain mean; "
                + (f"raise {' or '.join(fixes)}" if fixes else "raise outer.trim")
            ]
        if outer.aggregation == "centered_clip" and each < 3:
            return [
                f"outer.aggregation centered_clip needs at least 3 updates per shard to outvote one, but {round_of} "
                f"gives {each}: raise rounds.min_accepted to at least {3 * shards}"
            ]
        return []

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.to_builtins(self)  # the codec, a dataclass, as its dict too
        for section, optional in (("outer", "lr"), ("outer", "clip_tau"), ("privacy", "epsilon_budget")):
            if out[section][optional] is None:  # TOML has no null: an omitted key is the default
                del out[section][optional]
        return out


# --- Reading a posted spec: types, field by field ------------------------------------------------


def _read(kind: type[S], data: dict[str, Any], prefix: str, problems: list[str]) -> S | None:
    """`kind` built from `data`, each value checked against its field's declared type; every
    unknown key, missing required field and value of the wrong type is added to `problems` (and
    then there is nothing to build: None)."""
    fields = msgspec.structs.fields(kind)
    for key in sorted(set(data) - {f.name for f in fields}, key=str):
        problems.append(f"{prefix}{key}: unknown setting")
    values: dict[str, Any] = {}
    for f in fields:
        path = prefix + f.name
        if f.name not in data:
            if f.required:
                problems.append(f"{path}: required")
            continue
        value = data[f.name]
        if _is_section(f.type):
            if isinstance(value, dict):
                values[f.name] = _read(f.type, value, path + ".", problems)
            else:
                problems.append(f"{path} must be a table")
        elif _unannotated(f.type) is CodecConfig:
            values[f.name] = _codec(value, path, problems)
        else:
            leaf = mi.type_info(f.type)
            if _fits(value, leaf):
                values[f.name] = float(value) if _is_float(value, leaf) else value
            else:
                problems.append(f"{path}: expected {_expected(leaf)}, got {type(value).__name__} {_shown(value)}")
    return None if problems else kind(**values)


def _codec(value: object, path: str, problems: list[str]) -> CodecConfig | None:
    try:
        if isinstance(value, str):
            return CodecConfig.from_name(value)
        if isinstance(value, dict):
            return CodecConfig.from_dict(value)
        problems.append(f"{path} must be a codec name ({', '.join(CODEC_NAMES)}) or a table")
    except CodecError as error:
        problems.append(f"{path}: {error}")
    return None


def _is_section(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, msgspec.Struct)


def _unannotated(hint: Any) -> Any:
    while typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    return hint


def _unwrap(t: mi.Type) -> tuple[mi.Type, dict[str, Any], dict[str, Any]]:
    """`t` without its Metadata layers, and what they held: (type, extra, extra_json_schema)."""
    extra: dict[str, Any] = {}
    schema: dict[str, Any] = {}
    while isinstance(t, mi.Metadata):
        extra |= t.extra or {}
        schema |= t.extra_json_schema or {}
        t = t.type
    return t, extra, schema


def _fits(value: object, t: mi.Type) -> bool:
    t, _, _ = _unwrap(t)
    if isinstance(t, mi.UnionType):
        return any(_fits(value, arm) for arm in t.types)
    if isinstance(t, mi.NoneType):
        return value is None
    if isinstance(t, mi.IntType):
        return type(value) is int
    if isinstance(t, mi.FloatType):
        return isinstance(value, int | float) and not isinstance(value, bool) and _finite(value)
    if isinstance(t, mi.StrType):
        return isinstance(value, str)
    if isinstance(t, mi.BoolType):
        return isinstance(value, bool)
    raise TypeError(f"a spec field can't be read as {t!r}")


def _is_float(value: object, t: mi.Type) -> bool:
    """Whether `value` (which fits `t`) goes in as a float: an integer given for a number."""
    t, _, _ = _unwrap(t)
    arms = t.types if isinstance(t, mi.UnionType) else (t,)
    return type(value) is int and any(isinstance(_unwrap(arm)[0], mi.FloatType) for arm in arms)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


def _shown(value: object) -> str:
    """`value` as a problem quotes it: short and shallow, however long or deep what was sent."""
    if isinstance(value, int) and value.bit_length() > 128:  # repr refuses ints past 4300 digits
        return f"(an integer of about {math.floor(value.bit_length() * math.log10(2)) + 1} digits)"
    return _SHORT.repr(value)


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 2, 60, 60, 40


def _expected(t: mi.Type) -> str:
    t, _, _ = _unwrap(t)
    if isinstance(t, mi.UnionType):
        return " or ".join(_expected(arm) for arm in t.types)
    names = {
        mi.IntType: "an integer",
        mi.FloatType: "a number",
        mi.StrType: "a string",
        mi.BoolType: "true or false",
        mi.NoneType: "nothing",
    }
    return names[type(t)]


# --- Checking values against their declared bounds ----------------------------------------------


def _declared_problems(obj: msgspec.Struct, prefix: str) -> list[str]:
    """`prefix + field` and what is wrong, for each field of `obj` outside its declared bounds
    (sections and the codec check themselves)."""
    info = mi.type_info(type(obj))
    assert isinstance(info, mi.StructType)
    out = []
    for f in info.fields:
        value = getattr(obj, f.name)
        problem = _bound_problem(value, f.type)
        if problem is not None:
            out.append(f"{prefix}{f.name} {problem}")
    return out


def _bound_problem(value: Any, t: mi.Type) -> str | None:
    t, extra, schema = _unwrap(t)
    if isinstance(t, mi.UnionType):  # a number or None: None is always in bounds
        arms = [arm for arm in t.types if not isinstance(arm, mi.NoneType)]
        return None if value is None else _bound_problem(value, arms[0])
    if "enum" in schema and value not in schema["enum"]:
        return f"must be one of {', '.join(schema['enum'])}, got {_shown(value)}"
    if isinstance(t, mi.IntType | mi.FloatType):
        return _range_problem(value, t)
    if isinstance(t, mi.StrType):
        return _text_problem(value, t, extra)
    return None


def _range_problem(value: float, t: mi.IntType | mi.FloatType) -> str | None:
    low, low_open = (t.gt, True) if t.gt is not None else (t.ge, False)
    high, high_open = (t.lt, True) if t.lt is not None else (t.le, False)
    too_low = low is not None and not (value > low if low_open else value >= low)
    too_high = high is not None and not (value < high if high_open else value <= high)
    if not (too_low or too_high):
        return None
    got = f", got {_shown(value)}"
    if too_low and ((low == 0 and low_open) or (low == 1 and not low_open and isinstance(t, mi.IntType))):
        return "must be positive" + got
    if low is not None and high is not None:
        return f"must be within {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}" + got
    if too_low:
        if low == 0 and not low_open:
            return "must not be negative" + got
        return f"must be {'greater than' if low_open else 'at least'} {low}" + got
    return f"must be {'less than' if high_open else 'at most'} {high}" + got


def _text_problem(value: str, t: mi.StrType, extra: dict[str, Any]) -> str | None:
    if t.pattern is not None and re.fullmatch(t.pattern, value) is None:
        return f"must be {extra.get('says', 'a string matching ' + t.pattern)}, got {_shown(value)}"
    shortest, longest = t.min_length or 0, t.max_length
    if shortest <= len(value) and (longest is None or len(value) <= longest):
        return None
    if longest is None:
        return f"must be at least {shortest} characters, got {len(value)}"
    if shortest:
        return f"must be {shortest}-{longest} characters, got {len(value)}"
    return f"must be at most {longest} characters, got {len(value)}"
