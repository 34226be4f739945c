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
import hashlib
import importlib.util
import json
import logging
import multiprocessing
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from multiprocessing.pool import Pool

from coordinator.blobs import BlobStore
from coordinator.store import Store
from training.model import ModelConfig

__all__ = ["GRAPH_FORMAT", "GraphBlob", "GraphBuilds", "GraphPending", "graph_key", "onnx_missing"]

log = logging.getLogger(__name__)

GRAPH_FORMAT = 1
"""Raise when training.onnx_graphs changes what a graph computes or its inputs and outputs: every
coordinator then builds its graphs again."""

_ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


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


def onnx_missing() -> str | None:
    """Why this coordinator can't build graphs (packages missing), or None when it can."""
    missing = [name for name in _ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return f"this coordinator can't build ONNX graphs ({', '.join(missing)} missing: install commonweights[onnx])"


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


def _build_step_graph(config: dict[str, object], shard: list[str]) -> bytes:
    """In the build process: export and check one step graph."""
    import torch

    from training.onnx_graphs import build_step_graph

    torch.set_num_threads(1)  # leave the coordinator's own threads their cores
    return build_step_graph(ModelConfig(**config), trainable=shard)  # type: ignore[arg-type]


class GraphBuilds:
    """Builds step graphs on demand, one at a time in a child process, and serves the built ones."""

    def __init__(self, store: Store, blobs: BlobStore) -> None:
        self.store = store
        self.blobs = blobs
        self._lock = threading.Lock()
        self._pool: Pool | None = None
        self._building: set[str] = set()
        self._failed: dict[str, str] = {}
        self._closed = False

    def step_graph(self, config: ModelConfig, shard: Sequence[str]) -> GraphBlob | GraphPending:
        """The step graph of `config` training `shard`, or why there is none yet (its build then starts)."""
        key = graph_key("step", config, shard)
        built = self.store.graph(key)
        if built is not None and self.blobs.exists(built[0]):
            return GraphBlob(*built)
        missing = onnx_missing()
        if missing is not None:
            return GraphPending(missing, failed=True)
        with self._lock:
            if key in self._failed:
                return GraphPending(f"this model doesn't export to ONNX here: {self._failed[key]}", failed=True)
            if self._closed:
                return GraphPending("the coordinator is shutting down")
            if key not in self._building:
                if self._pool is None:
                    # spawn, not fork: the coordinator runs threads (torch's among them)
                    self._pool = multiprocessing.get_context("spawn").Pool(1)
                log.info("building the ONNX step graph of a %d-parameter shard (key %s)", len(shard), key[:12])
                self._building.add(key)
                self._pool.apply_async(
                    _build_step_graph,
                    (dataclasses.asdict(config), list(shard)),
                    callback=lambda data: self._built(key, data),
                    error_callback=lambda error: self._failed_build(key, error),
                )
        return GraphPending("building the ONNX step graph of this campaign's model; this takes a minute or two")

    def _built(self, key: str, data: bytes) -> None:
        try:
            digest = self.blobs.put(data)
            self.store.add_graph(key, digest, len(data))
        except Exception as error:  # a full disk, a closed store
            self._failed_build(key, error)
            return
        log.info("ONNX step graph %s built: %d bytes, blob %s", key[:12], len(data), digest[:12])
        with self._lock:
            self._building.discard(key)

    def _failed_build(self, key: str, error: BaseException) -> None:
        """A GraphError, a crashed build process, a full disk: the same to a caller."""
        log.error("the ONNX step graph %s could not be built: %s", key[:12], error)
        with self._lock:
            self._failed[key] = str(error) or type(error).__name__
            self._building.discard(key)

    def is_graph(self, digest: str) -> bool:
        """Whether a blob is a built graph (any volunteer may download those: they hold no weights)."""
        return self.store.is_graph(digest)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()  # a build under way is lost: it starts again on the next start
