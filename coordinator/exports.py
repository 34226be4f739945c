"""A campaign's model as downloads (Hugging Face, GGUF, ONNX) and as text ("Try it").

    >>> record = campaign_record(store, row, config, version=3, coordinator="https://cw.example.org")
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
import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.campaign import CampaignSpec
from coordinator.store import CampaignRow, Store
from training.export.card import CampaignRecord, Contributor, LossPoint
from training.model import ModelConfig, build_model, count_parameters
from training.outer import OUTER_DEFAULTS

__all__ = [
    "EXPORT_FORMATS",
    "ExportBusy",
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
MAX_QUEUED_BUILDS = 4  # distinct builds waiting or under way; more are refused (503, retry later)
BUILD_TIMEOUT_S = 3600.0
WAIT_S = 120.0  # how long a download waits for its build before it is told to come back
KEPT_VERSIONS = 3  # per campaign: the versions whose exports were used last keep their files
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
        data_description=spec.data_description,
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
    name: str  # the campaign's
    checkpoint: Path  # the version's weights (a blob)
    tokenizer: Path  # the dataset's tokenizer.json
    record: dict[str, Any] = field(default_factory=dict)  # CampaignRecord.to_dict(); needed to build

    @property
    def filename(self) -> str:
        stem = f"{self.name}-v{self.version}"
        if self.format == "hf":
            return f"{stem}-hf.zip"
        if self.format.startswith("gguf-"):
            return f"{stem}-{self.format.removeprefix('gguf-')}.gguf"
        return f"{stem}.onnx"


class ExportBusy(RuntimeError):
    """Not now: too many builds waiting, or this one still under way; retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


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
        # Scratch beside the result: a killed build leaves it where the next start sweeps (SCRATCH).
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=SCRATCH) as scratch:
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
    # If memory runs out, the kernel should kill this process, not the coordinator (Linux only).
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text("1000")
    try:
        build_export(job, Path(out))
        conn.send(("built", ""))
    except Exception as error:  # ExportError, or what an exporter raises
        conn.send(("failed", f"{type(error).__name__}: {error}"))
    finally:
        conn.close()


SCRATCH = ".scratch-"
PARTIAL = ".partial"


class ExportShelf:
    """Builds exports on demand, each in a fresh process, and keeps them by (campaign, version, format).

    Bounded: at most MAX_QUEUED_BUILDS distinct builds wait or run (more are refused with ExportBusy),
    a build that runs past BUILD_TIMEOUT_S is killed, and per campaign only the KEPT_VERSIONS versions
    used last keep their files. A failed build is reported as such for FAILED_RETRY_S, then tried
    again. What a killed coordinator left half-written is swept at the next start.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._builds: dict[Path, Future[Path]] = {}
        self._failed: dict[Path, tuple[str, float]] = {}
        self._slots = threading.Semaphore(MAX_PARALLEL_BUILDS)
        self._closed = False
        self._processes: set[Any] = set()
        self._sweep()

    def _sweep(self) -> None:
        if not self.folder.is_dir():
            return
        for leftover in [*self.folder.rglob(f"*{PARTIAL}"), *self.folder.rglob(f"{SCRATCH}*")]:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)

    def path(self, job: ExportJob) -> Path:
        return self.folder / str(job.campaign_id) / str(job.version) / job.filename

    def built(self, job: ExportJob) -> Path | None:
        """The export's file if it is built (and marks its version as used now)."""
        path = self.path(job)
        if not path.is_file():
            return None
        with contextlib.suppress(OSError):
            os.utime(path.parent)
        return path

    async def get(self, job: ExportJob, *, wait_s: float = WAIT_S) -> Path:
        """The export's file, building it first if needed. RuntimeError with the reason if the build
        failed; ExportBusy if it can't start now or is still running after `wait_s` (it goes on)."""
        future = self.start(job)
        try:  # shielded: one request giving up must not cancel the build others wait for
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), wait_s)
        except TimeoutError:
            raise ExportBusy(f"{job.filename} is still being built; retry in a minute", 60.0) from None

    def start(self, job: ExportJob) -> Future[Path]:
        if not job.record:
            raise ValueError("an export is built from the campaign's records: the job has none")
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
                if len(self._builds) >= MAX_QUEUED_BUILDS:
                    raise ExportBusy(f"{len(self._builds)} exports are being built; retry in a minute", 60.0)
                future = Future()
                future.set_running_or_notify_cancel()  # running: no waiter can cancel it
                self._builds[path] = future
                threading.Thread(target=self._build, args=(job, path, future), name="export", daemon=True).start()
            return future

    def _build(self, job: ExportJob, path: Path, future: Future[Path]) -> None:
        try:
            with self._slots:
                outcome, detail = self._run(job, path)
        except BaseException as error:  # a full disk, no process to spare: the waiters hear why
            outcome, detail = "failed", f"{type(error).__name__}: {error}"
        with self._lock:
            self._builds.pop(path, None)
            if outcome != "built":
                self._failed[path] = (detail, time.monotonic())
            busy = {p.parent for p in self._builds}
        if outcome == "built":
            log.info("export %s built", path.name)
            self._evict(path.parent.parent, keep={path.parent, *busy})
            future.set_result(path)
        else:
            log.error("export %s failed: %s", path.name, detail)
            future.set_exception(RuntimeError(detail))

    def _evict(self, campaign: Path, keep: set[Path]) -> None:
        """Delete the exports of this campaign's versions used longest ago, beyond KEPT_VERSIONS."""
        try:
            versions = sorted((d for d in campaign.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime)
        except OSError:
            return
        for old in versions[: max(0, len(versions) - KEPT_VERSIONS)]:
            if old not in keep:
                shutil.rmtree(old, ignore_errors=True)

    def _run(self, job: ExportJob, path: Path) -> tuple[str, str]:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + PARTIAL)
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
            if receive.poll(BUILD_TIMEOUT_S):
                outcome, detail = receive.recv()  # our own child's answer, over a pipe
            else:
                process.terminate()
                outcome, detail = "failed", f"the export took longer than {BUILD_TIMEOUT_S:.0f} s and was stopped"
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
        return str(outcome), str(detail)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            processes = list(self._processes)
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)


class TryItRefused(Exception):
    """A generation request turned away (too many from this network, or one is running), and when to retry."""

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
    max_parameters: int = 200_000_000  # larger models are downloaded, not run on the coordinator
    min_temperature: float = 0.05  # below it (but above 0) the softmax overflows; 0 is greedy


class TryIt:
    """Server-side text generation for the dashboard's "Try it": one generation at a time on a thread
    of its own (never the pool that answers volunteers), a budget of requests per client network,
    bounded prompt, length and time; models kept for the last versions asked for."""

    def __init__(self, limits: TryItLimits | None = None, clock: Any = time.monotonic) -> None:
        self.limits = limits or TryItLimits()
        self.clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="try-it")
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

    async def run(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """`generate` on the desk's own thread."""
        loop = asyncio.get_running_loop()
        answer: dict[str, Any] = await loop.run_in_executor(self._executor, lambda: self.generate(*args, **kwargs))
        return answer

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

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
