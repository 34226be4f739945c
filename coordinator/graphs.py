"""The ONNX step graphs a coordinator serves to volunteers that train with ONNX Runtime.

A step graph (training.onnx_graphs) depends on the model config and the shard, not on weights or a
version, so one serves a campaign's shard for its whole life. It is built once, in a process of its
own (exporting traces the model in Python for a minute or more; a thread would hold the GIL the
event loop needs), checked numerically against the training core there, then stored as a
content-addressed blob like a checkpoint. The store remembers which blob answers which build key,
so a restarted coordinator serves the graph again instead of exporting it anew.

    >>> graphs = GraphBuilds(store, blobs)
    >>> graphs.step_graph(config, shard)      # GraphBlob once built; until then why not, and the build starts
    GraphPending(reason='building the ONNX step graph...')

The build key names everything the graph's bytes depend on: the graph kind and format, the model
config, the shard's parameters in order, and the versions of torch and onnxscript that export it.
A coordinator upgraded to another torch builds its graphs again.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import logging
import multiprocessing
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from coordinator.store import Store
from coordinator.store.blobs import Blobs
from training.model import ModelConfig

__all__ = ["GRAPH_FORMAT", "GraphBlob", "GraphBuilds", "GraphPending", "graph_key", "onnx_missing"]

log = logging.getLogger(__name__)

GRAPH_FORMAT = 1
"""Raise when training.onnx_graphs changes what a graph computes or its inputs and outputs: every
coordinator then builds its graphs again."""

_ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
FAILED_RETRY_S = 600.0  # a failed build is reported for this long, then tried again
MAX_REASON = 300  # characters of a build's error kept for volunteers (no_work.reason holds 1024)


@dataclass(frozen=True)
class GraphBlob:
    """A built graph: the blob volunteers download."""

    sha256: str
    size: int


@dataclass(frozen=True)
class GraphPending:
    """No graph to serve yet: building, or it can't be built (`failed`), and why, for the volunteer."""

    reason: str
    failed: bool = False


@functools.cache
def onnx_missing() -> str | None:
    """Why this coordinator can't build graphs (packages missing), or None when it can."""
    missing = [name for name in _ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return f"this coordinator can't build ONNX graphs ({', '.join(missing)} missing: install commonweights[onnx])"


@functools.cache
def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "none"


def graph_key(kind: str, config: ModelConfig, shard: Sequence[str]) -> str:
    """The build key of a graph: a SHA-256 of everything its bytes depend on."""
    described = {
        "kind": kind,
        "format": GRAPH_FORMAT,
        "config": dataclasses.asdict(config),
        "shard": list(shard),
        "torch": _package_version("torch"),
        "onnxscript": _package_version("onnxscript"),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def _build_graph(kind: str, config: dict[str, object], shard: list[str]) -> bytes:
    """In the build process: export and check one graph, a step graph or the loss graph."""
    import torch

    from training.onnx_graphs import build_loss_graph, build_step_graph

    torch.set_num_threads(1)  # leave the coordinator's own threads their cores
    model = ModelConfig(**config)  # type: ignore[arg-type]
    return build_loss_graph(model) if kind == "loss" else build_step_graph(model, trainable=shard)


def _build_into(out: Connection, kind: str, config: dict[str, object], shard: list[str]) -> None:
    """The build process's body: the graph's bytes, or why not, back through `out`."""
    try:
        out.send(("built", _build_graph(kind, config, shard)))
    except Exception as error:  # GraphError, or anything the exporter raises
        out.send(("failed", f"{type(error).__name__}: {error}"))
    finally:
        out.close()


@dataclass
class _Build:
    key: str
    kind: str
    config: ModelConfig
    shard: list[str]


class GraphBuilds:
    """Builds step graphs on demand, one at a time, each in a fresh child process, and serves the built ones.

    A build that fails — the exporter's error, a numeric check the graph fails, a build process that
    dies (killed for memory) — is reported to volunteers as such for FAILED_RETRY_S, then tried again.
    """

    def __init__(self, store: Store, blobs: Blobs) -> None:
        self.store = store
        self.blobs = blobs
        self._lock = threading.Lock()
        self._queue: list[_Build] = []
        self._building: set[str] = set()  # queued or under way
        self._failed: dict[str, tuple[str, float]] = {}  # key -> (why, when)
        self._process: BaseProcess | None = None
        self._worker: threading.Thread | None = None
        self._closed = False

    def step_graph(self, config: ModelConfig, shard: Sequence[str]) -> GraphBlob | GraphPending:
        """The step graph of `config` training `shard`, or why there is none yet (its build then starts)."""
        return self._graph("step", config, shard)

    def loss_graph(self, config: ModelConfig, names: Sequence[str]) -> GraphBlob | GraphPending:
        """The loss graph of `config` (every parameter, `names`, an input), or why there is none yet."""
        return self._graph("loss", config, names)

    def _graph(self, kind: str, config: ModelConfig, shard: Sequence[str]) -> GraphBlob | GraphPending:
        key = graph_key(kind, config, shard)
        built = self._built_graph(key)
        if built is not None:
            return built
        missing = onnx_missing()
        if missing is not None:
            return GraphPending(missing, failed=True)
        with self._lock:
            failed = self._failed.get(key)
            if failed is not None and time.monotonic() - failed[1] < FAILED_RETRY_S:
                return GraphPending(f"this model doesn't export to ONNX here: {failed[0]}", failed=True)
            if self._closed:
                return GraphPending("the coordinator is shutting down")
            if key not in self._building and self._built_graph(key) is None:  # again: one may have just finished
                log.info("building the ONNX %s graph of %d parameters (key %s)", kind, len(shard), key[:12])
                self._building.add(key)
                self._queue.append(_Build(key, kind, config, list(shard)))
                if self._worker is None or not self._worker.is_alive():
                    self._worker = threading.Thread(target=self._work, name="graph-builds", daemon=True)
                    self._worker.start()
        return GraphPending(f"building the ONNX {kind} graph of this campaign's model; this takes a minute or two")

    def build_pid(self) -> int | None:
        """The process id of the build under way, if any (for operators, and tests that kill it)."""
        with self._lock:
            process = self._process
        return process.pid if process is not None and process.is_alive() else None

    def _built_graph(self, key: str) -> GraphBlob | None:
        built = self.store.graph(key)
        return GraphBlob(*built) if built is not None and self.blobs.exists(built[0]) else None

    def _work(self) -> None:
        """The builder thread: one build process at a time, until the queue is empty."""
        while True:
            with self._lock:
                if not self._queue or self._closed:
                    return
                build = self._queue.pop(0)
            outcome, detail = self._run(build)
            if outcome == "built":
                assert isinstance(detail, bytes)
                try:
                    digest = self.blobs.put(detail)
                    self.store.add_graph(build.key, digest, len(detail))
                    log.info(
                        "ONNX %s graph %s built: %d bytes, blob %s",
                        build.kind,
                        build.key[:12],
                        len(detail),
                        digest[:12],
                    )
                except Exception as error:  # a full disk, a closed store
                    outcome, detail = "failed", f"it could not be stored: {error}"
            if outcome != "built":
                log.error("the ONNX %s graph %s could not be built: %s", build.kind, build.key[:12], detail)
                with self._lock:
                    self._failed[build.key] = (str(detail)[:MAX_REASON], time.monotonic())
            with self._lock:
                self._building.discard(build.key)

    def _run(self, build: _Build) -> tuple[str, bytes | str]:
        """("built", the graph) or ("failed", why), from a fresh spawned process (not forked: the
        coordinator runs threads, torch's among them)."""
        context = multiprocessing.get_context("spawn")
        receive, send = context.Pipe(duplex=False)
        process = context.Process(
            target=_build_into, args=(send, build.kind, dataclasses.asdict(build.config), build.shard), daemon=True
        )
        with self._lock:
            if self._closed:
                return "failed", "the coordinator is shutting down"
            process.start()
            self._process = process
        send.close()
        try:
            outcome, detail = receive.recv()  # the bytes are our own child's, pickled over a pipe
        except EOFError:  # it died without a word: killed for memory, a native crash
            process.join()
            return "failed", f"the build process died (exit code {process.exitcode})"
        finally:
            receive.close()
        process.join()
        return str(outcome), detail

    def is_graph(self, digest: str) -> bool:
        """Whether a blob is a built graph (any volunteer may download those: they hold no weights)."""
        return self.store.is_graph(digest)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            process = self._process
        if process is not None and process.is_alive():
            process.terminate()  # a build under way is lost: it starts again on the next start
