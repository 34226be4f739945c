"""A campaign's model as downloads (Hugging Face, GGUF, ONNX) and as text ("Try it").

    >>> record = campaign_record(service, row, version=3, coordinator="https://cw.example.org")
    >>> shelf = ExportShelf(data_dir / "exports")
    >>> path = await shelf.get(ExportJob(...))       # built once per (campaign, version, format), then kept
    >>> desk = TryIt(); await desk.generate(...)      # bounded, rate-limited text from the latest version

Exports are built on demand. Building traces or quantizes the model in Python for seconds to
minutes (a thread would hold the GIL the event loop needs, and an export that runs out of memory
must not take the server with it), so each runs in a fresh spawned process; a thread per build
waits for it, at most `MAX_PARALLEL_BUILDS` at once. The result is kept under
`data_dir/exports/<campaign>/<version>/` and served from there afterwards: a version never changes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import shutil
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.campaign import CampaignSpec
from coordinator.store import CampaignRow, Store
from training.export.card import CampaignRecord, Contributor, LossPoint
from training.model import ModelConfig, build_model, count_parameters
from training.outer import OUTER_DEFAULTS

__all__ = [
    "EXPORT_FORMATS",
    "ExportJob",
    "ExportShelf",
    "TryIt",
    "TryItRefused",
    "campaign_record",
    "describe_inner",
    "describe_outer",
]

log = logging.getLogger(__name__)

EXPORT_FORMATS = {  # the name in the URL -> what the file is
    "hf": "Hugging Face transformers folder (zip): LlamaForCausalLM, safetensors, tokenizer, model card",
    "gguf-f16": "GGUF for llama.cpp, 16-bit floats",
    "gguf-q8_0": "GGUF for llama.cpp, 8-bit (Q8_0)",
    "gguf-f32": "GGUF for llama.cpp, 32-bit floats",
    "onnx": "ONNX: input_ids → logits, no KV cache (onnxruntime)",
}
MAX_PARALLEL_BUILDS = 1
FAILED_RETRY_S = 300.0
CARD_CONTRIBUTORS = 20


def describe_outer(spec: CampaignSpec) -> str:
    outer = spec.outer
    lr = outer.lr if outer.lr is not None else OUTER_DEFAULTS[outer.optimizer]["lr"]
    if outer.optimizer == "average":
        text = "averaging" + (f" (outer lr {lr:g})" if lr != 1.0 else "")
    elif outer.optimizer == "nesterov":
        text = f"Nesterov SGD (lr {lr:g}, momentum {outer.momentum:g})"
    else:
        text = f"{outer.optimizer} (lr {lr:g})"
    combined = {
        "mean": "their token-weighted mean",
        "trimmed_mean": f"a trimmed mean (trim {outer.trim:g})",
        "centered_clip": "centered clipping",
    }.get(outer.aggregation, outer.aggregation)
    return f"{text} of each round's updates, combined by {combined}"


def describe_inner(spec: CampaignSpec) -> str:
    inner = spec.inner
    return (
        f"AdamW, {inner.steps} steps per work unit, peak lr {inner.lr:g}, "
        f"{inner.batch_size * inner.grad_accum} × {inner.seq_len} tokens per step"
    )


def _manifest(dataset_path: str) -> dict[str, Any]:
    try:
        value = json.loads((Path(dataset_path) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def campaign_record(
    store: Store, row: CampaignRow, config: ModelConfig, *, version: int, coordinator: str = ""
) -> CampaignRecord:
    """What the campaign's records say about its model at `version`.
    Losses and tokens are those of versions up to `version`; credit is as of now."""
    spec = CampaignSpec.from_dict(row.spec)
    versions = [v for v in store.versions(row.id) if v.version <= version]
    this = next((v for v in versions if v.version == version), None)
    credit: dict[str, float] = store.credit_since(row.id, 0.0)
    board = store.leaderboard(row.id, limit=CARD_CONTRIBUTORS)
    manifest = _manifest(row.dataset_path)
    kind = str(manifest.get("tokenizer", "?"))
    tokenizer = (
        f"byte-level BPE, {config.vocab_size} tokens" if kind == "bpe" else f"{kind}, {config.vocab_size} tokens"
    )
    return CampaignRecord(
        name=row.name,
        model=spec.model,
        config=config,
        parameters=count_parameters(build_model(config, device="meta")),
        version=version,
        tokenizer=tokenizer,
        tokens_trained=int(this.tokens_total) if this is not None else 0,
        rounds_closed=version,  # each closed round publishes one version
        codec=spec.codec.name,
        outer_optimizer=describe_outer(spec),
        inner=describe_inner(spec),
        data_source=str(manifest.get("source", "")),
        dataset=spec.dataset,
        license=spec.license,
        description=spec.description,
        coordinator=coordinator,
        campaign_id=row.id,
        volunteers=len(credit),
        total_credit=float(sum(credit.values())),
        contributors=tuple(
            Contributor(str(e["name"]), float(e["credit"] or 0.0), int(e["tokens"] or 0)) for e in board
        ),
        losses=tuple(
            LossPoint(v.version, int(v.tokens_total), float(v.holdout_loss))
            for v in versions
            if v.holdout_loss is not None
        ),
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


@dataclass(frozen=True)
class ExportJob:
    """Everything one export needs, in plain values (it crosses into the build process)."""

    campaign_id: int
    version: int
    format: str
    checkpoint: Path  # the version's weights (a blob)
    tokenizer: Path  # the dataset's tokenizer.json
    record: dict[str, Any]  # CampaignRecord.to_dict()

    @property
    def filename(self) -> str:
        name = f"{self.record['name']}-v{self.version}"
        if self.format == "hf":
            return f"{name}-hf.zip"
        if self.format.startswith("gguf-"):
            return f"{name}-{self.format.removeprefix('gguf-')}.gguf"
        return f"{name}.onnx"


def build_export(job: ExportJob, out: Path) -> None:
    """Write `job`'s file at `out` (in the build process)."""
    import torch

    from training.checkpoint import load_weights
    from training.data.tokenizer import load_tokenizer
    from training.export.gguf_file import write_gguf
    from training.export.hf import write_hf
    from training.export.onnx_logits import write_onnx

    torch.set_num_threads(1)  # leave the coordinator's own threads their cores
    record = CampaignRecord.from_dict(job.record)
    weights = load_weights(job.checkpoint.read_bytes())
    tokenizer = load_tokenizer(job.tokenizer)
    if job.format == "hf":
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch) / job.filename.removesuffix("-hf.zip")
            write_hf(folder, weights, record.config, tokenizer, card=record)
            with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
                for path in sorted(folder.iterdir()):
                    archive.write(path, f"{folder.name}/{path.name}")
    elif job.format.startswith("gguf-"):
        kind = job.format.removeprefix("gguf-")
        write_gguf(out, weights, record.config, tokenizer, kind=kind, name=record.name, license=record.license)  # type: ignore[arg-type]
    elif job.format == "onnx":
        write_onnx(out, weights, record.config)
    else:
        raise ValueError(f"unknown export format {job.format!r}")


def _build_into(conn: Any, job: ExportJob, out: str) -> None:
    try:
        build_export(job, Path(out))
        conn.send(("built", ""))
    except Exception as error:  # ExportError, or what an exporter raises
        conn.send(("failed", f"{type(error).__name__}: {error}"))
    finally:
        conn.close()


class ExportShelf:
    """Builds exports on demand, each in a fresh process, and keeps them by (campaign, version, format)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._builds: dict[Path, Future[Path]] = {}
        self._failed: dict[Path, tuple[str, float]] = {}
        self._slots = threading.Semaphore(MAX_PARALLEL_BUILDS)
        self._closed = False
        self._processes: set[Any] = set()

    def path(self, job: ExportJob) -> Path:
        return self.folder / str(job.campaign_id) / str(job.version) / job.filename

    def built(self, job: ExportJob) -> Path | None:
        path = self.path(job)
        return path if path.is_file() else None

    async def get(self, job: ExportJob) -> Path:
        """The export's file, building it first if needed (RuntimeError with the reason if that fails)."""
        return await asyncio.wrap_future(self.start(job))

    def start(self, job: ExportJob) -> Future[Path]:
        path = self.path(job)
        with self._lock:
            if path.is_file():
                done: Future[Path] = Future()
                done.set_result(path)
                return done
            failed = self._failed.get(path)
            if failed is not None and time.monotonic() - failed[1] < FAILED_RETRY_S:
                refused: Future[Path] = Future()
                refused.set_exception(RuntimeError(failed[0]))
                return refused
            future = self._builds.get(path)
            if future is None:
                future = Future()
                self._builds[path] = future
                threading.Thread(target=self._build, args=(job, path, future), name="export", daemon=True).start()
            return future

    def _build(self, job: ExportJob, path: Path, future: Future[Path]) -> None:
        with self._slots:
            outcome, detail = self._run(job, path)
        with self._lock:
            self._builds.pop(path, None)
            if outcome != "built":
                self._failed[path] = (detail, time.monotonic())
        if outcome == "built":
            log.info("export %s built: %d bytes", path.name, path.stat().st_size)
            future.set_result(path)
        else:
            log.error("export %s failed: %s", path.name, detail)
            future.set_exception(RuntimeError(detail))

    def _run(self, job: ExportJob, path: Path) -> tuple[str, str]:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        context = multiprocessing.get_context("spawn")  # never fork a threaded server
        receive, send = context.Pipe(duplex=False)
        process = context.Process(target=_build_into, args=(send, job, str(partial)), daemon=True)
        with self._lock:
            if self._closed:
                return "failed", "the coordinator is shutting down"
            process.start()
            self._processes.add(process)
        send.close()
        try:
            outcome, detail = receive.recv()  # our own child's answer, over a pipe
        except EOFError:
            outcome, detail = "failed", "the export process died (out of memory?)"
        finally:
            receive.close()
            process.join()
            with self._lock:
                self._processes.discard(process)
        if outcome == "built":
            partial.replace(path)
        else:
            partial.unlink(missing_ok=True)
            shutil.rmtree(partial, ignore_errors=True)
        return str(outcome), str(detail)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            processes = list(self._processes)
        for process in processes:
            if process.is_alive():
                process.terminate()


class TryItRefused(Exception):
    """A generation request turned away: `status` 429 (too many, or busy) with a reason."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class TryItLimits:
    max_prompt_chars: int = 500
    max_new_tokens: int = 64
    time_limit_s: float = 5.0
    per_client: int = 10  # requests per client per window
    window_s: float = 60.0
    models_kept: int = 2


class TryIt:
    """Server-side text generation for the dashboard's "Try it": one generation at a time, a budget
    of requests per client address, bounded prompt, length and time; models kept for the last versions."""

    def __init__(self, limits: TryItLimits | None = None, clock: Any = time.monotonic) -> None:
        self.limits = limits or TryItLimits()
        self.clock = clock
        self._lock = threading.Lock()
        self._busy = False
        self._recent: dict[str, deque[float]] = {}
        self._models: OrderedDict[tuple[int, int], Any] = OrderedDict()

    def admit(self, client: str) -> None:
        """Take one request for `client` or raise TryItRefused; call `release` after an admitted one."""
        now = self.clock()
        with self._lock:
            recent = self._recent.setdefault(client, deque())
            while recent and now - recent[0] > self.limits.window_s:
                recent.popleft()
            if len(recent) >= self.limits.per_client:
                raise TryItRefused(
                    f"at most {self.limits.per_client} tries per {self.limits.window_s:g} s; wait a little",
                    self.limits.window_s - (now - recent[0]),
                )
            if self._busy:
                raise TryItRefused("another visitor's text is being generated; try again in a few seconds", 2.0)
            recent.append(now)
            self._busy = True
            if len(self._recent) > 10_000:  # forget idle clients rather than grow without end
                for key in [k for k, v in self._recent.items() if not v or now - v[-1] > self.limits.window_s]:
                    del self._recent[key]

    def release(self) -> None:
        with self._lock:
            self._busy = False

    def generate(
        self,
        key: tuple[int, int],
        checkpoint: Path,
        tokenizer: Path,
        config: ModelConfig,
        prompt: str,
        *,
        max_new_tokens: int,
        temperature: float,
        seed: int,
    ) -> dict[str, Any]:
        """On a worker thread, after `admit`: generate and describe the result."""
        from training.data.tokenizer import load_tokenizer
        from training.generate import generate, model_from_checkpoint

        with self._lock:
            cached = self._models.get(key)
            if cached is not None:
                self._models.move_to_end(key)
        if cached is None:
            cached = (model_from_checkpoint(checkpoint.read_bytes(), config), load_tokenizer(tokenizer))
            with self._lock:
                self._models[key] = cached
                while len(self._models) > self.limits.models_kept:
                    self._models.popitem(last=False)
        model, tok = cached
        result = generate(
            model,
            tok,
            prompt,
            max_new_tokens=min(max_new_tokens, self.limits.max_new_tokens),
            temperature=temperature,
            top_k=40 if temperature > 0 else None,
            seed=seed,
            time_limit_s=self.limits.time_limit_s,
        )
        return {
            "version": key[1],
            "prompt": prompt,
            "text": result.text,
            "new_tokens": len(result.ids),
            "prompt_tokens": result.prompt_tokens,
            "seconds": round(result.seconds, 3),
            "stopped": result.stopped,
        }
