"""The volunteer's content-addressed blob cache: checkpoints and data slices, keyed by SHA-256.

    >>> cache = BlobCache(Path("~/.cache/commonweights/blobs"), max_bytes=4 << 30)
    >>> data = await cache.fetch(unit.checkpoint, fetch_chunk)   # cached, resumed or downloaded
    >>> cache.evict(keep={unit.checkpoint.sha256, unit.data.sha256})

`fetch_chunk(sha256, offset, length)` is the transport: an async call answering one
`blob_request` with its `blob_chunk`. Chunks are appended to `<sha256>.part`, so a download cut
off by a disconnect or a reboot continues from the partial file's length. A finished file is
renamed to `<sha256>` only after its SHA-256 matched; a mismatch deletes it and downloads the blob
again once. Reading a cached blob checks the hash again (a disk can rot) and refreshes its
modification time, which is what least-recently-used eviction goes by.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from training.atomic_write import fsync_folder, write_atomically

if sys.platform != "win32":
    import fcntl

from protocol.limits import MAX_BLOB_CHUNK_BYTES, MAX_INFLIGHT_BLOB_REQUESTS
from protocol.messages import BlobChunk, BlobRef

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "BlobCache",
    "BlobError",
    "ChunkFetcher",
    "DownloadProgress",
]

DEFAULT_CACHE_BYTES: Final = 4 << 30
_SHA256: Final = re.compile(r"[0-9a-f]{64}")
_HASH_BLOCK: Final = 1 << 20
_LOCK_POLL_S: Final = 0.2

ChunkFetcher = Callable[[str, int, int], Awaitable[BlobChunk]]
"""Answers blob_request(sha256, offset, length) with the coordinator's blob_chunk."""


class BlobError(Exception):
    """A blob that can't be had: the coordinator sent the wrong bytes twice, or answered nonsense."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class DownloadProgress:
    sha256: str
    done: int
    total: int
    resumed_from: int


class BlobCache:
    """Blobs under `root`, at most `max_bytes` of them (the blobs of the unit at hand are kept)."""

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int = DEFAULT_CACHE_BYTES,
        chunk_bytes: int = MAX_BLOB_CHUNK_BYTES,
        window: int = MAX_INFLIGHT_BLOB_REQUESTS,
    ) -> None:
        if not 1 <= chunk_bytes <= MAX_BLOB_CHUNK_BYTES:
            raise ValueError(f"chunk_bytes must be within 1..{MAX_BLOB_CHUNK_BYTES}")
        if not 1 <= window <= MAX_INFLIGHT_BLOB_REQUESTS:
            raise ValueError(f"window must be within 1..{MAX_INFLIGHT_BLOB_REQUESTS}")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.chunk_bytes = chunk_bytes
        self.window = window

    def path_for(self, sha256: str) -> Path:
        if not _SHA256.fullmatch(sha256):
            raise ValueError(f"not a SHA-256 digest: {sha256!r}")
        return self.root / sha256

    def partial_path(self, sha256: str) -> Path:
        return self.path_for(sha256).with_suffix(".part")

    def lock_path(self, sha256: str) -> Path:
        return self.path_for(sha256).with_suffix(".lock")

    def contains(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def partial_size(self, sha256: str) -> int:
        try:
            return self.partial_path(sha256).stat().st_size
        except FileNotFoundError:
            return 0

    def read(self, sha256: str) -> bytes | None:
        """The cached blob after checking its hash; None (and the file gone) when absent or corrupt."""
        path = self.path_for(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != sha256:
            path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)
        return data

    def put(self, data: bytes) -> str:
        """Store bytes already in hand (tests, a blob that arrived another way); returns the hash."""
        sha256 = hashlib.sha256(data).hexdigest()
        write_atomically(self.path_for(sha256), data)
        return sha256

    async def fetch(
        self,
        ref: BlobRef,
        fetch_chunk: ChunkFetcher,
        *,
        on_progress: Callable[[DownloadProgress], None] | None = None,
    ) -> bytes:
        """The blob `ref` names: from the cache, or downloaded (resuming a partial file) and verified."""
        cached = self.read(ref.sha256)
        if cached is not None:
            return cached
        async with self._exclusive(ref.sha256):
            data = await self._fetch_locked(ref, fetch_chunk, on_progress)
            # Done for good: whoever waits on this lock finds the blob cached; newcomers read it first.
            self.lock_path(ref.sha256).unlink(missing_ok=True)
            return data

    async def _fetch_locked(
        self, ref: BlobRef, fetch_chunk: ChunkFetcher, on_progress: Callable[[DownloadProgress], None] | None
    ) -> bytes:
        cached = self.read(ref.sha256)  # another process may have finished it while we waited
        if cached is not None:
            return cached
        for attempt in range(2):
            await self._download(ref, fetch_chunk, on_progress)
            part = self.partial_path(ref.sha256)
            if _file_sha256(part) == ref.sha256:
                os.replace(part, self.path_for(ref.sha256))  # the partial file was fsynced as it finished
                fsync_folder(self.root)
                data = self.read(ref.sha256)
                if data is not None:
                    return data
            # Wrong bytes: maybe a stale partial file from elsewhere, maybe the wire. Start afresh.
            part.unlink(missing_ok=True)
            if attempt:
                break
        raise BlobError(
            "checksum_mismatch",
            f"blob {ref.sha256[:12]}… arrived twice with the wrong SHA-256; the coordinator may be serving "
            "a corrupt file",
        )

    @contextlib.asynccontextmanager
    async def _exclusive(self, sha256: str) -> AsyncIterator[None]:
        """Hold `<sha256>.lock`, so two volunteer processes sharing the cache never write one partial file.

        An advisory lock (flock) that the OS drops when its holder dies; where there is none (Windows),
        processes don't coordinate and a clash costs a re-download after the hash check.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        if sys.platform == "win32":
            yield
            return
        with open(self.lock_path(sha256), "a+b") as lock:
            while True:
                try:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(_LOCK_POLL_S)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    async def _download(
        self, ref: BlobRef, fetch_chunk: ChunkFetcher, on_progress: Callable[[DownloadProgress], None] | None
    ) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        part = self.partial_path(ref.sha256)
        written = self.partial_size(ref.sha256)
        if written > ref.size:
            part.unlink()
            written = 0
        resumed_from = written
        if on_progress is not None:
            on_progress(DownloadProgress(ref.sha256, written, ref.size, resumed_from))
        # Requests are pipelined (the protocol allows a window of them) but bytes land in the file in
        # order, so the partial file is always a prefix of the blob and a restart resumes from its end.
        wanted: list[tuple[int, int]] = []  # (offset, length) not yet requested, in order
        position = written
        received: dict[int, bytes] = {}
        inflight: dict[asyncio.Task[BlobChunk], tuple[int, int]] = {}
        try:
            with open(part, "ab") as out:
                while written < ref.size:
                    while len(inflight) < self.window and (wanted or position < ref.size):
                        if wanted:
                            offset, length = wanted.pop(0)
                        else:
                            offset, length = position, min(self.chunk_bytes, ref.size - position)
                            position += length
                        task = asyncio.ensure_future(fetch_chunk(ref.sha256, offset, length))
                        inflight[task] = (offset, length)
                    done, _ = await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        offset, length = inflight.pop(task)
                        chunk = task.result()
                        _check_chunk(ref, chunk, offset, length)
                        received[offset] = chunk.data
                        if len(chunk.data) < length:  # a short answer: ask again for the rest
                            wanted.insert(0, (offset + len(chunk.data), length - len(chunk.data)))
                    while written in received:
                        data = received.pop(written)
                        out.write(data)
                        written += len(data)
                    out.flush()
                    if on_progress is not None:
                        on_progress(DownloadProgress(ref.sha256, written, ref.size, resumed_from))
                os.fsync(out.fileno())
        finally:
            for task in inflight:
                task.cancel()
            for task in inflight:
                with contextlib.suppress(BaseException):
                    await task

    def usage(self) -> int:
        """Bytes the cache holds, partial files included."""
        return sum(size for _, size, _ in self._entries())

    def evict(self, *, keep: Collection[str] = ()) -> list[str]:
        """Delete least recently used blobs until the cache fits `max_bytes`; returns what went."""
        entries = sorted(self._entries(), key=lambda entry: entry[2])
        total = sum(size for _, size, _ in entries)
        removed: list[str] = []
        for path, size, _ in entries:
            if total <= self.max_bytes:
                break
            if path.name.partition(".")[0] in keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                total -= size
                removed.append(path.name)
        return removed

    def _entries(self) -> list[tuple[Path, int, float]]:
        try:
            paths = list(self.root.iterdir())
        except FileNotFoundError:
            return []
        entries = []
        for path in paths:
            if not _SHA256.fullmatch(path.name.partition(".")[0]) or path.suffix == ".lock":
                continue
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                entries.append((path, stat.st_size, stat.st_mtime))
        return entries


def _check_chunk(ref: BlobRef, chunk: BlobChunk, offset: int, length: int) -> None:
    if chunk.sha256 != ref.sha256 or chunk.offset != offset:
        raise BlobError(
            "bad_chunk", f"asked for {ref.sha256[:12]}… at {offset}, got {chunk.sha256[:12]}… at {chunk.offset}"
        )
    if chunk.total_size != ref.size:
        raise BlobError(
            "bad_chunk", f"blob {ref.sha256[:12]}… is {chunk.total_size} bytes, but the unit said {ref.size}"
        )
    if not chunk.data or len(chunk.data) > length:
        raise BlobError("bad_chunk", f"blob {ref.sha256[:12]}…: {len(chunk.data)} bytes for a request of {length}")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as source:
            while block := source.read(_HASH_BLOCK):
                digest.update(block)
    except FileNotFoundError:
        return ""
    return digest.hexdigest()
