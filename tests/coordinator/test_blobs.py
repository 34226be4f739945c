"""The blob stores' contract (coordinator.store.blobs.Blobs), on the folder and on a real S3 server."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from coordinator.store import BlobNotFound, Blobs, open_blobs, sha256_hex
from tests.support.backends import Backend


@pytest.fixture
def blobs(backend: Backend, tmp_path: Path) -> Blobs:
    return open_blobs(backend.blobs, tmp_path)


def test_a_blob_is_stored_under_its_sha256_and_read_back_whole_or_in_ranges(blobs: Blobs) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    digest = blobs.put(data)
    assert digest == sha256_hex(data)
    assert blobs.exists(digest) and blobs.size(digest) == len(data) and blobs.verify(digest)
    assert blobs.get(digest) == data
    assert blobs.read(digest, 1000, 5000) == data[1000:6000]
    assert blobs.read(digest, len(data) - 10, 100) == data[-10:]  # fewer bytes at the end
    assert blobs.read(digest, len(data), 100) == b""
    assert blobs.put(data) == digest  # the same bytes again: harmless
    assert blobs.local_copy(digest).read_bytes() == data


def test_a_missing_blob_or_a_name_that_is_no_digest_raises_blob_not_found(blobs: Blobs) -> None:
    missing = sha256_hex(b"never stored")
    for call in (blobs.get, blobs.size, blobs.local_copy, lambda d: blobs.read(d, 0, 10)):
        with pytest.raises(BlobNotFound):
            call(missing)
        with pytest.raises(BlobNotFound, match="not a sha256"):
            call("../../etc/passwd")
    assert not blobs.exists(missing) and not blobs.verify(missing) and not blobs.exists("../x")
    assert blobs.delete_if_older(missing, time.time() + 60) == 0
    blobs.remove(missing)  # nothing there: nothing to do


def test_only_a_blob_stored_before_the_cutoff_is_deleted(blobs: Blobs) -> None:
    digest = blobs.put(b"rejected update")
    assert blobs.delete_if_older(digest, time.time() - 3600) == 0  # stored after the cutoff: kept
    assert blobs.exists(digest)
    assert blobs.delete_if_older(digest, time.time() + 3600) == len(b"rejected update")
    assert not blobs.exists(digest)


def test_a_removed_blob_is_gone_and_can_be_stored_again(blobs: Blobs) -> None:
    digest = blobs.put(b"a data slice")
    blobs.remove(digest)
    assert not blobs.exists(digest)
    assert blobs.put(b"a data slice") == digest and blobs.get(digest) == b"a data slice"


def test_blob_urls_of_an_unknown_kind_are_refused(tmp_path: Path) -> None:
    from coordinator.store import StoreError

    with pytest.raises(StoreError, match="s3://BUCKET/PREFIX"):
        open_blobs("gs://bucket/prefix", tmp_path)
