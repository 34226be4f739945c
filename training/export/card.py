"""The model card: a `README.md` made from a campaign's own records, and its holdout-loss chart.

    >>> record = CampaignRecord(name="stdlib-tiny", model="tiny", ...)   # what the coordinator knows
    >>> write_card(folder, record)          # README.md (Hugging Face's front matter) and holdout-loss.png

The records come from the coordinator (GET /api/campaigns/{id}/card gives them as JSON, the fields
below); nothing on the card is typed in by hand. The chart needs matplotlib (the `export` extra);
without it the card says so and lists the losses as a table only.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.export.llama import ExportError
from training.model import ModelConfig

__all__ = ["CHART_FILE", "CampaignRecord", "Contributor", "LossPoint", "render_card", "write_card", "write_chart"]

CHART_FILE = "holdout-loss.png"
MAX_CARD_CONTRIBUTORS = 20  # the card lists this many by credit; the rest are counted


@dataclass(frozen=True)
class Contributor:
    name: str
    credit: float
    tokens: int


@dataclass(frozen=True)
class LossPoint:
    version: int
    tokens: int
    holdout_loss: float


@dataclass(frozen=True)
class CampaignRecord:
    """What a campaign's records say about the model of one version."""

    name: str
    model: str  # the preset
    config: ModelConfig
    parameters: int
    version: int
    tokenizer: str  # "byte-level BPE, 512 tokens"
    tokens_trained: int
    rounds_closed: int
    codec: str
    outer_optimizer: str  # "nesterov (lr 0.7, momentum 0.9)"
    inner: str  # "AdamW, 50 steps per unit, lr 0.003, 8 × 128 tokens per step"
    data_source: str  # the dataset's own description of its source
    dataset: str
    license: str = ""
    description: str = ""
    data_description: str = ""  # the lead's words about the data
    coordinator: str = ""
    campaign_id: int | None = None
    volunteers: int = 0
    total_credit: float = 0.0
    contributors: tuple[Contributor, ...] = ()
    losses: tuple[LossPoint, ...] = ()
    created_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["config"] = self.config.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CampaignRecord:
        """Parse the JSON form (ExportError for anything malformed: it may come from a server)."""
        try:
            fields = dict(values)
            fields["config"] = ModelConfig.from_dict(dict(fields["config"]))
            fields["contributors"] = tuple(Contributor(**dict(c)) for c in fields.get("contributors", ()))
            fields["losses"] = tuple(LossPoint(**dict(p)) for p in fields.get("losses", ()))
            record = cls(**fields)
        except (KeyError, TypeError, ValueError) as error:
            raise ExportError(f"the campaign's records are malformed: {error}") from None
        for name, kind in (("name", str), ("model", str), ("version", int), ("tokens_trained", int)):
            if not isinstance(getattr(record, name), kind):
                raise ExportError(f"the campaign's records are malformed: {name} is not a {kind.__name__}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", record.name):  # it names files
            raise ExportError("the campaign's records are malformed: the name is not a campaign name")
        return record


# Licenses Hugging Face knows by id; any other goes in as `other` with its name (the Hub checks the id).
HF_LICENSES = frozenset(
    [
        "apache-2.0",
        "mit",
        "bsd-2-clause",
        "bsd-3-clause",
        "cc0-1.0",
        "cc-by-4.0",
        "cc-by-sa-4.0",
        "cc-by-nc-4.0",
        "cc-by-nc-sa-4.0",
        "gpl-3.0",
        "lgpl-3.0",
        "agpl-3.0",
        "mpl-2.0",
        "openrail",
        "unlicense",
        "odc-by",
    ]
)


def _front_license(value: str) -> dict[str, str]:
    value = value.strip().lower()
    if not value:
        return {"license": "unknown"}
    if value in HF_LICENSES:
        return {"license": value}
    name = value if re.fullmatch(r"[a-z0-9][a-z0-9.+-]{0,63}", value) else "unknown"
    return {"license": "other", "license_name": name}


def _md(text: str) -> str:
    """Text from the records as Markdown that renders as the text: no HTML, no markup, no links."""
    flat = " ".join(text.split()).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    escaped = re.sub(r"([\\`*_{}\[\]()#+!|~-])", r"\\\1", flat)
    escaped = re.sub(r"^(\d+)\.", r"\1\\.", escaped)  # "1." would start a list
    # A zero-width space keeps URLs, www. names and e-mail addresses from turning into links.
    return re.sub(r"(://|www\.|@)", lambda m: m.group(1)[0] + "\u200b" + m.group(1)[1:], escaped)


def _count(n: float) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.1f}{suffix}"
    return f"{n:g}"


def render_card(record: CampaignRecord, *, chart: bool, formats: str = "hf") -> str:
    """The card's Markdown; `chart`: whether CHART_FILE sits beside it."""
    c = record.config
    front = {
        **_front_license(record.license),
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["commonweights", "diloco", "volunteer-computing", "llama"],
    }
    lines = ["---", *(f"{k}: {json.dumps(v)}" for k, v in front.items()), "---", ""]
    lines += [f"# {_md(record.name)} (version {record.version})", ""]
    if record.description:
        lines += [_md(record.description), ""]
    where = f" on {_md(record.coordinator)}" if record.coordinator else ""
    lines += [
        f"Trained by volunteers with Commonweights (DiLoCo){where}: "
        f"{record.volunteers} volunteer(s), {record.rounds_closed} round(s), {_count(record.tokens_trained)} tokens.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        "| Architecture | Llama-style decoder (`LlamaForCausalLM`): RoPE, RMSNorm, SwiGLU, tied embeddings |",
        f"| Preset | {_md(record.model)} |",
        f"| Parameters | {record.parameters:,} ({_count(record.parameters)}) |",
        f"| Layers × width | {c.n_layer} × {c.d_model}, {c.n_head} heads, MLP {c.d_ff} |",
        f"| Context | {c.max_seq_len} tokens |",
        f"| Tokenizer | {_md(record.tokenizer)} |",
        f"| License | {_md(record.license) or 'not stated by the campaign'} |",
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| Tokens trained | {record.tokens_trained:,} |",
        f"| Rounds (outer steps) | {record.rounds_closed} |",
        f"| Inner optimizer | {_md(record.inner)} |",
        f"| Outer optimizer | {_md(record.outer_optimizer)} |",
        f"| Update codec | {_md(record.codec)} |",
        f"| Dataset | {_md(record.dataset)} |",
        f"| Data source | {_md(record.data_source) or 'not recorded'} |",
        "",
    ]
    if record.data_description:
        lines += ["### Data, as the campaign describes it", "", _md(record.data_description), ""]
    lines += [
        "## Holdout loss",
        "",
    ]
    if not record.losses:
        lines += ["No version has a holdout loss yet.", ""]
    else:
        if chart:
            lines += [f"![Holdout loss by tokens trained]({CHART_FILE})", ""]
        else:
            lines += ["(No chart: matplotlib is not installed where this card was made.)", ""]
        lines += ["| Version | Tokens | Holdout loss (nats/token) |", "|---:|---:|---:|"]
        shown = record.losses if len(record.losses) <= 12 else _spread(record.losses, 12)
        lines += [f"| {p.version} | {p.tokens:,} | {p.holdout_loss:.4f} |" for p in shown]
        lines += [""]
    lines += ["## Volunteers", ""]
    if record.contributors:
        lines += ["| Volunteer | Tokens | Credit (TFLOP) | Share of credit |", "|---|---:|---:|---:|"]
        total = record.total_credit or sum(v.credit for v in record.contributors) or 1.0
        listed = record.contributors[:MAX_CARD_CONTRIBUTORS]
        for person in listed:
            share = person.credit / total
            lines.append(f"| {_md(person.name)} | {person.tokens:,} | {person.credit:.3g} | {share:.1%} |")
        if record.volunteers > len(listed):
            lines.append(f"| and {record.volunteers - len(listed)} more | | | |")
        lines += [""]
    else:
        lines += ["No credited contributions yet.", ""]
    lines += ["## Use", ""]
    if formats == "hf":
        lines += [
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            'model = AutoModelForCausalLM.from_pretrained(".")',
            'tokenizer = AutoTokenizer.from_pretrained(".")',
            'ids = tokenizer("def main(", return_tensors="pt").input_ids',
            "print(tokenizer.decode(model.generate(ids, max_new_tokens=40, do_sample=False)[0]))",
            "```",
            "",
        ]
    lines += [
        "The model is small and trained on little text: it continues text in the style of its data and knows",
        "nothing else. It was not tuned to follow instructions or checked for safety.",
        "",
    ]
    return "\n".join(lines)


def _spread(points: Sequence[LossPoint], n: int) -> list[LossPoint]:
    step = (len(points) - 1) / (n - 1)
    return [points[round(i * step)] for i in range(n)]


def write_chart(path: Path, record: CampaignRecord) -> bool:
    """Draw holdout loss against tokens trained as a PNG; False when matplotlib is missing or there
    are no losses."""
    if not record.losses:
        return False
    try:
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    except ImportError:
        return False
    figure = Figure(figsize=(6.4, 3.6), dpi=100)
    axes = figure.add_subplot()
    axes.plot([p.tokens for p in record.losses], [p.holdout_loss for p in record.losses], marker="o", markersize=3)
    axes.set_xlabel("tokens trained")
    axes.set_ylabel("holdout loss (nats/token)")
    axes.set_title(f"{record.name}: holdout loss by version")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return True


def write_card(folder: Path, record: CampaignRecord, *, formats: str = "hf") -> list[Path]:
    """README.md and, when it can be drawn, the chart; the files written."""
    chart = folder / CHART_FILE
    drawn = write_chart(chart, record)
    (folder / "README.md").write_text(render_card(record, chart=drawn, formats=formats), encoding="utf-8")
    return [folder / "README.md", *([chart] if drawn else [])]
