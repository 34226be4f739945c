"""Content-addressed blobs (checkpoints, data slices, accepted updates): the interface, and the folder
that keeps them by default.

    >>> blobs: Blobs = BlobStore(data_dir / "blobs")
    >>> digest = blobs.put(payload)          # durable when it returns (fsync of file and folder)
    >>> blobs.read(digest, offset=0, length=1 << 20)

A blob's name is the sha256 of its bytes, so writing the same bytes twice is harmless and a reader
can verify what it got. Writes go to a temporary file that is renamed into place: a crash never
leaves a partial blob under a real name. `coordinator.store.s3.S3Blobs` keeps them in an
S3-compatible bucket instead, for coordinator replicas that share them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path
from typing import Protocol

from training.atomic_write import write_atomically

__all__ = ["BlobNotFound", "BlobStore", "Blobs", "sha256_hex"]

DIGEST = re.compile(r"^[0-9a-f]{64}$")


class BlobNotFound(KeyError):
    code = "blob_not_found"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    """The digest, if it is one (64 lowercase hex digits); a blob name is never anything else."""
    if not DIGEST.match(digest):
        raise BlobNotFound(f"{digest!r} is not a sha256 hex digest")
    return digest


class Blobs(Protocol):
    """Where blobs live. Every method takes a digest and raises `BlobNotFound` for one that isn't a
    sha256 hex digest or names no blob (`exists`, `verify` and `delete_if_older` answer instead)."""

    def put(self, data: bytes, *, durable: bool = True, digest: str | None = None) -> str:
        """Store `data` under its sha256 (given as `digest` when the caller has it) and return it;
        written durably before it returns unless `durable=False` (a blob that can be made again)."""
        ...

    def get(self, digest: str) -> bytes: ...

    def read(self, digest: str, offset: int, length: int) -> bytes:
        """Up to `length` bytes from `offset` (fewer at the end)."""
        ...

    def size(self, digest: str) -> int: ...

    def exists(self, digest: str) -> bool: ...

    def verify(self, digest: str) -> bool:
        """Whether the blob is there with exactly the bytes its name promises."""
        ...

    def remove(self, digest: str) -> None:
        """Delete a blob if it is there (one found damaged, about to be written again)."""
        ...

    def delete_if_older(self, digest: str, before: float) -> int:
        """Delete a blob last stored before `before` (Unix time); the bytes freed (0 if newer or absent)."""
        ...

    def local_copy(self, digest: str) -> Path:
        """A file on this machine with the blob's bytes, for readers that need a path (exports)."""
        ...


class BlobStore:
    """Blobs in a folder, under DIGEST[:2]/DIGEST[2:]: the embedded default."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        check_digest(digest)
        return self.root / digest[:2] / digest[2:]

    def local_copy(self, digest: str) -> Path:
        path = self.path(digest)
        if not path.is_file():
            raise BlobNotFound(f"no blob {digest}")
        return path

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

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
        """For blobs no record needs any more (rejected updates)."""
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


_: type[Blobs] = BlobStore  # mypy proves the folder is a whole `Blobs`
