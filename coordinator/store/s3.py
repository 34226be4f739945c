"""Blobs in S3-compatible object storage (AWS S3, SeaweedFS, MinIO, R2 …), shared by coordinator replicas.

    >>> blobs = S3Blobs.open("s3://commonweights/prod", cache=data_dir / "blob-cache")
    >>> digest = blobs.put(payload)          # durable when it returns: the PUT was acknowledged

The endpoint and credentials come from the environment, as every S3 tool reads them:
AWS_ENDPOINT_URL (omit for AWS itself), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, and
AWS_ALLOW_HTTP=true for an endpoint without TLS. Keys are PREFIX/DIGEST[:2]/DIGEST[2:], as in the
folder store. A PUT is atomic (an object appears whole or not at all) and acknowledged only once it is
stored, so `put` is as durable as the server makes a stored object (AWS S3: replicated; a single
SeaweedFS or MinIO node: on its disk, fsynced only if it is configured to). The client is obstore (Rust's object_store);
it retries transient errors itself. On AWS, give the role s3:ListBucket as well as Get/Put/DeleteObject:
without it a missing key answers 403, not 404. Needs the `scale` extra.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from pathlib import Path

from coordinator.store.blobs import BlobNotFound, Blobs, check_digest, sha256_hex
from training.atomic_write import write_atomically

try:
    import obstore
    from obstore.store import S3Store
except ImportError as error:  # pragma: no cover - the `scale` extra is missing
    raise ImportError("the S3 blob store needs obstore: pip install 'commonweights[scale]'") from error

__all__ = ["S3Blobs"]


class S3Blobs:
    """`Blobs` in a bucket under a prefix; `local_copy` keeps downloaded blobs in `cache`."""

    def __init__(self, store: S3Store, url: str, cache: Path) -> None:
        self.store = store
        self.url = url
        self.cache = cache
        self._checked: set[str] = set()  # cached copies verified by this process

    @classmethod
    def open(cls, url: str, *, cache: Path) -> S3Blobs:
        """`url` is s3://BUCKET[/PREFIX]. Nothing is sent until the first call."""
        if not url.startswith("s3://") or len(url) <= len("s3://"):
            raise ValueError(f"{url!r} is not an s3://BUCKET/PREFIX URL")
        return cls(S3Store.from_url(url.rstrip("/")), url, cache)

    @staticmethod
    def _key(digest: str) -> str:
        check_digest(digest)
        return f"{digest[:2]}/{digest[2:]}"

    def put(self, data: bytes, *, durable: bool = True, digest: str | None = None) -> str:
        """Upload `data` under its sha256. Uploading the same bytes again is harmless, and refreshes the
        object's time (so `delete_if_older` leaves a blob just stored again alone, as the folder does)."""
        digest = digest or sha256_hex(data)
        obstore.put(self.store, self._key(digest), data)
        return digest

    def get(self, digest: str) -> bytes:
        try:
            return bytes(obstore.get(self.store, self._key(digest)).bytes())
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {digest}") from None

    def read(self, digest: str, offset: int, length: int) -> bytes:
        size = self.size(digest)
        if offset >= size or length <= 0:
            return b""
        try:
            return bytes(obstore.get_range(self.store, self._key(digest), start=offset, end=min(size, offset + length)))
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {digest}") from None

    def size(self, digest: str) -> int:
        try:
            return int(obstore.head(self.store, self._key(digest))["size"])
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {digest}") from None

    def exists(self, digest: str) -> bool:
        try:
            self.size(digest)
        except BlobNotFound:
            return False
        return True

    def verify(self, digest: str) -> bool:
        try:
            return sha256_hex(self.get(digest)) == digest
        except BlobNotFound:
            return False

    def remove(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            obstore.delete(self.store, self._key(digest))

    def delete_if_older(self, digest: str, before: float) -> int:
        try:
            meta = obstore.head(self.store, self._key(digest))
        except FileNotFoundError:
            return 0
        modified: datetime.datetime = meta["last_modified"]
        # S3 keeps times to the second: a blob stored within the second of `before` counts as newer.
        if modified.timestamp() + 1 >= before:
            return 0
        self.remove(digest)
        return int(meta["size"])

    def local_copy(self, digest: str) -> Path:
        """Downloaded once into the cache (blobs never change under their name). A copy this process
        did not write is checked once (written without fsync, a power cut may have emptied it)."""
        check_digest(digest)
        path = self.cache / digest[:2] / digest[2:]
        if digest in self._checked and path.is_file():
            return path
        if not (path.is_file() and sha256_hex(path.read_bytes()) == digest):
            data = self.get(digest)
            if sha256_hex(data) != digest:
                raise BlobNotFound(f"blob {digest} in {self.url} does not match its name")
            write_atomically(path, data, durable=False)
        self._checked.add(digest)
        return path

    def __repr__(self) -> str:
        return f"S3Blobs({self.url!r}, endpoint={os.environ.get('AWS_ENDPOINT_URL', 'AWS')!r})"


_: type[Blobs] = S3Blobs  # mypy proves the bucket is a whole `Blobs`
