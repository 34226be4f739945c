from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from protocol.messages import BlobChunk, BlobRef
from volunteer_app.blob_cache import BlobCache, BlobError


class Source:
    """The coordinator's side of blob_request, over bytes in memory; records every request."""

    def __init__(self, blob: bytes, *, corrupt_passes: int = 0, short: bool = False) -> None:
        self.blob = blob
        self.corrupt_passes = corrupt_passes  # how many full downloads get a flipped byte
        self.short = short  # answer with at most half of what was asked
        self.requests: list[tuple[int, int]] = []

    async def __call__(self, sha256: str, offset: int, length: int) -> BlobChunk:
        self.requests.append((offset, length))
        if self.short:
            length = max(1, length // 2)
        data = bytearray(self.blob[offset : offset + length])
        if self.corrupt_passes and offset == 0:
            data[0] ^= 0xFF
        if self.corrupt_passes and offset + len(data) == len(self.blob):
            self.corrupt_passes -= 1
        return BlobChunk(sha256=sha256, offset=offset, total_size=len(self.blob), data=bytes(data))


def ref_of(blob: bytes) -> BlobRef:
    return BlobRef(sha256=hashlib.sha256(blob).hexdigest(), size=len(blob))


BLOB = os.urandom(10_000)


async def test_a_blob_is_downloaded_in_chunks_verified_and_then_served_from_the_cache(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, chunk_bytes=1024, window=3)
    source = Source(BLOB)
    assert await cache.fetch(ref_of(BLOB), source) == BLOB
    assert sorted(source.requests) == [(o, min(1024, len(BLOB) - o)) for o in range(0, len(BLOB), 1024)]
    assert cache.contains(ref_of(BLOB).sha256) and cache.partial_size(ref_of(BLOB).sha256) == 0
    again = Source(BLOB)
    assert await cache.fetch(ref_of(BLOB), again) == BLOB
    assert again.requests == []


async def test_a_download_resumes_from_the_partial_file(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, chunk_bytes=1024, window=1)
    ref = ref_of(BLOB)
    cache.partial_path(ref.sha256).write_bytes(BLOB[:4000])  # what a killed process left behind
    source = Source(BLOB)
    seen: list[int] = []
    assert await cache.fetch(ref, source, on_progress=lambda p: seen.append(p.resumed_from)) == BLOB
    assert source.requests[0] == (4000, 1024)
    assert sum(length for _, length in source.requests) == len(BLOB) - 4000
    assert set(seen) == {4000}


async def test_short_answers_are_completed_by_asking_again(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, chunk_bytes=1000, window=4)
    assert await cache.fetch(ref_of(BLOB), Source(BLOB, short=True)) == BLOB


async def test_a_hash_mismatch_is_rejected_and_the_blob_fetched_again(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, chunk_bytes=4096)
    source = Source(BLOB, corrupt_passes=1)
    assert await cache.fetch(ref_of(BLOB), source) == BLOB
    assert [offset for offset, _ in source.requests].count(0) == 2  # downloaded twice


async def test_a_blob_that_keeps_arriving_wrong_is_an_error_and_leaves_nothing_behind(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, chunk_bytes=4096)
    ref = ref_of(BLOB)
    with pytest.raises(BlobError) as caught:
        await cache.fetch(ref, Source(BLOB, corrupt_passes=5))
    assert caught.value.code == "checksum_mismatch"
    assert not cache.contains(ref.sha256) and cache.partial_size(ref.sha256) == 0


async def test_a_stale_partial_file_with_wrong_bytes_is_replaced(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, chunk_bytes=4096)
    ref = ref_of(BLOB)
    cache.partial_path(ref.sha256).write_bytes(b"\0" * 5000)
    assert await cache.fetch(ref, Source(BLOB)) == BLOB


async def test_a_cached_file_that_rotted_on_disk_is_fetched_again(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path)
    sha = cache.put(BLOB)
    cache.path_for(sha).write_bytes(b"rotten" + BLOB[6:])
    assert cache.read(sha) is None and not cache.contains(sha)
    assert await cache.fetch(ref_of(BLOB), Source(BLOB)) == BLOB


async def test_a_chunk_for_another_blob_size_is_refused(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path)
    with pytest.raises(BlobError, match="unit said"):
        await cache.fetch(BlobRef(sha256=ref_of(BLOB).sha256, size=len(BLOB) + 1), Source(BLOB))


def test_eviction_removes_least_recently_used_blobs_but_keeps_the_ones_in_use(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, max_bytes=2500)
    blobs = [bytes([i]) * 1000 for i in range(4)]
    shas = [cache.put(b) for b in blobs]
    for age, sha in enumerate(shas):  # blob 0 is the oldest
        os.utime(cache.path_for(sha), (1000 + age, 1000 + age))
    removed = cache.evict(keep={shas[0]})
    assert removed == [shas[1], shas[2]]
    assert cache.contains(shas[0]) and cache.contains(shas[3])
    assert cache.usage() == 2000
    assert cache.read(shas[0]) == blobs[0]


async def test_two_volunteers_sharing_a_cache_download_a_blob_once(tmp_path: Path) -> None:
    first, second = BlobCache(tmp_path, chunk_bytes=1024), BlobCache(tmp_path, chunk_bytes=1024)
    one, other = Source(BLOB), Source(BLOB)
    got = await asyncio.gather(first.fetch(ref_of(BLOB), one), second.fetch(ref_of(BLOB), other))
    assert list(got) == [BLOB, BLOB]
    assert sorted([len(one.requests), len(other.requests)]) == [0, 10]
    assert sorted(p.name for p in tmp_path.iterdir()) == [ref_of(BLOB).sha256]  # no partial or lock file left
