"""The content-addressed blob directory: checkpoints, data slices and accepted updates.

    >>> blobs = BlobStore(data_dir / "blobs")
    >>> digest = blobs.put(payload)          # durable when it returns (fsync of file and folder)
    >>> blobs.read(digest, offset=0, length=1 << 20)

A blob's name is the sha256 of its bytes, so writing the same bytes twice is harmless and a reader
can verify what it got. Writes go to a temporary file that is renamed into place: a crash never
leaves a partial blob under a real name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path

from training.atomic_write import write_atomically

__all__ = ["BlobNotFound", "BlobStore", "sha256_hex"]

DIGEST = re.compile(r"^[0-9a-f]{64}$")


class BlobNotFound(KeyError):
    code = "blob_not_found"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if not DIGEST.match(digest):
            raise BlobNotFound(f"{digest!r} is not a sha256 hex digest")
        return self.root / digest[:2] / digest[2:]

    def put(self, data: bytes, *, durable: bool = True, digest: str | None = None) -> str:
        """Store `data` under its sha256. `durable=False` is for blobs that can be made again from
        other data (a unit's data slice): no fsync, so a power cut may lose them (see `verify`).
        `digest` is the sha256 the caller already computed of exactly these bytes (hashing a 9 MB
        update again costs ~12 ms)."""
        digest = digest or sha256_hex(data)
        target = self.path(digest)
        if target.exists():
            with contextlib.suppress(FileNotFoundError):
                os.utime(target)  # stored again just now: `delete_if_older` must leave it alone
            if target.exists():
                return digest
        write_atomically(target, data, durable=durable)
        return digest

    def delete_if_older(self, digest: str, before: float) -> int:
        """Delete a blob last stored before `before` (Unix time); the bytes freed (0 if it was newer
        or absent). For blobs no record needs any more (rejected updates)."""
        target = self.path(digest)
        try:
            stat = target.stat()
            if stat.st_mtime >= before:
                return 0
            target.unlink()
        except FileNotFoundError:
            return 0
        return stat.st_size

    def verify(self, digest: str) -> bool:
        """Whether the blob is here with exactly the bytes its name promises."""
        try:
            return sha256_hex(self.path(digest).read_bytes()) == digest
        except (FileNotFoundError, BlobNotFound):
            return False

    def exists(self, digest: str) -> bool:
        try:
            return self.path(digest).is_file()
        except BlobNotFound:
            return False

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {digest}") from None

    def get(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {digest}") from None

    def read(self, digest: str, offset: int, length: int) -> bytes:
        try:
            with self.path(digest).open("rb") as handle:
                handle.seek(offset)
                return handle.read(length)
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {digest}") from None
