"""`commonweights export`: a campaign's model as a Hugging Face folder, a GGUF file or an ONNX model.

    commonweights export --coordinator URL --campaign ID [--version V] --format hf --out DIR
    commonweights export --checkpoint model.safetensors --tokenizer tokenizer.json --format gguf --out DIR

From a coordinator it downloads the version's weights, the tokenizer and the campaign's records (the
model card is made of them) and builds the export here; from local files it needs the model's shape
(a preset, found from the weights' shapes, or `--model-config` JSON as GET /api/campaigns/{id} gives
it) and makes a card only when given `--card` (the records as JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_export", "export_from_coordinator", "run_export"]

Subparsers = Any
FORMATS = ("hf", "gguf", "onnx")


def add_export(commands: Subparsers) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "export",
        help="write a trained model as a Hugging Face folder, a GGUF file or an ONNX model",
        description=(
            "Export a campaign's model from a coordinator (--coordinator, --campaign) or from local files "
            "(--checkpoint, --tokenizer). hf: a folder transformers loads as LlamaForCausalLM, with a model card; "
            "gguf: a file llama.cpp loads; onnx: a next-token logits graph for onnxruntime (no KV cache)."
        ),
    )
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write into")
    remote = parser.add_argument_group("from a coordinator")
    remote.add_argument("--coordinator", metavar="URL", help="e.g. http://127.0.0.1:8470")
    remote.add_argument("--campaign", type=int, metavar="ID")
    remote.add_argument("--version", type=int, default=None, help="a model version (default: the latest)")
    remote.add_argument("--token", default=None, help="an API token (not needed for public campaigns)")
    local = parser.add_argument_group("from local files")
    local.add_argument("--checkpoint", type=Path, metavar="FILE", help="the weights (.safetensors)")
    local.add_argument("--tokenizer", type=Path, metavar="FILE", help="the dataset's tokenizer.json")
    local.add_argument("--model", default=None, help="the model preset (default: the one of the weights' shape)")
    local.add_argument("--model-config", type=Path, default=None, metavar="FILE", help="the model config as JSON")
    local.add_argument("--card", type=Path, default=None, metavar="FILE", help="the campaign's records as JSON")
    parser.add_argument(
        "--gguf-type", choices=("f32", "f16", "q8_0"), default="f16", help="GGUF tensor type (default f16)"
    )
    parser.set_defaults(handler=run_export)


def _fail(message: str) -> int:
    print(f"commonweights export: {message}", file=sys.stderr)
    return 2


def run_export(args: argparse.Namespace) -> int:
    from rich.console import Console

    from coordinator.client import ApiError, CoordinatorClient
    from training.checkpoint import CheckpointError, load_weights
    from training.data import DataError
    from training.data.tokenizer import load_tokenizer
    from training.export import CampaignRecord, ExportError
    from training.generate import config_for_weights
    from training.model import ModelConfig

    console = Console(stderr=True)
    remote = args.coordinator is not None
    if remote == (args.checkpoint is not None):
        return _fail("give either --coordinator and --campaign, or --checkpoint and --tokenizer")
    record: CampaignRecord | None = None
    try:
        if remote:
            if args.campaign is None:
                return _fail("--coordinator needs --campaign ID")
            api = CoordinatorClient(args.coordinator, args.token, timeout=600)
            written = export_from_coordinator(
                api,
                args.campaign,
                args.format,
                args.out,
                version=args.version,
                gguf_type=args.gguf_type,
                console=console,
            )
        else:
            if args.tokenizer is None:
                return _fail("--checkpoint needs --tokenizer FILE (the dataset's tokenizer.json)")
            weights = load_weights(args.checkpoint.read_bytes())
            tokenizer = load_tokenizer(args.tokenizer)
            if args.model_config is not None:
                config = ModelConfig.from_dict(json.loads(args.model_config.read_text(encoding="utf-8")))
            else:
                config = config_for_weights(weights, preset=args.model)
            if args.card is not None:
                record = CampaignRecord.from_dict(json.loads(args.card.read_text(encoding="utf-8")))
            written = _write(
                args.format,
                args.out,
                args.checkpoint.stem,
                None,
                weights,
                config,
                tokenizer,
                record,
                args.gguf_type,
                console,
            )
    except ApiError as error:
        return _fail(f"the coordinator said {error}")
    except OSError as error:
        return _fail(f"{error}")
    except (ExportError, CheckpointError, DataError, ValueError) as error:
        return _fail(str(error))
    for path in written:
        print(path)
    return 0


def export_from_coordinator(
    api: Any,
    campaign_id: int,
    fmt: str,
    out: Path,
    *,
    version: int | None = None,
    gguf_type: str = "f16",
    console: Any = None,
) -> list[Path]:
    """Download a version's weights, tokenizer and records from a coordinator (a CoordinatorClient)
    and write the export into `out`; the files written."""
    from rich.console import Console

    from training.checkpoint import load_weights
    from training.data.tokenizer import load_tokenizer
    from training.export import CampaignRecord

    console = console or Console(stderr=True)
    with console.status("asking the coordinator for the campaign's records…"):
        record = CampaignRecord.from_dict(api.card(campaign_id, version))
    with console.status(f"downloading the weights of version {record.version}…"):
        weights = load_weights(api.checkpoint(campaign_id, record.version))
        tokenizer_text = api.tokenizer(campaign_id)
    out.mkdir(parents=True, exist_ok=True)
    downloaded = out / ".tokenizer-download.json"
    downloaded.write_text(tokenizer_text, encoding="utf-8")
    try:
        tokenizer = load_tokenizer(downloaded)
    finally:
        downloaded.unlink()
    return _write(fmt, out, record.name, record.version, weights, record.config, tokenizer, record, gguf_type, console)


def _write(
    fmt: str,
    out: Path,
    name: str,
    version: int | None,
    weights: Any,
    config: Any,
    tokenizer: Any,
    record: Any,
    gguf_type: str,
    console: Any,
) -> list[Path]:
    from training.export import write_card, write_hf
    from training.export.gguf_file import write_gguf
    from training.export.onnx_logits import write_onnx

    stem = name if version is None else f"{name}-v{version}"
    if fmt == "hf":
        with console.status(f"writing the Hugging Face folder {out}…"):
            return write_hf(out, weights, config, tokenizer, card=record)
    if fmt == "gguf":
        with console.status(f"writing GGUF ({gguf_type})…"):
            path = write_gguf(
                out / f"{stem}-{gguf_type}.gguf",
                weights,
                config,
                tokenizer,
                kind=gguf_type,  # type: ignore[arg-type]
                name=name,
                license=record.license if record is not None else "",
            )
    else:
        with console.status("exporting to ONNX and checking it against torch (a minute for larger models)…"):
            path = write_onnx(out / f"{stem}.onnx", weights, config)
    cards = write_card(out, record, formats=fmt) if record is not None else []
    return [path, *cards]
