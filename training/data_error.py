"""The one error type of the data pipeline: a code for programs and a sentence for people.

It lives outside `training.data`, whose package imports numpy and tokenizers, so that finding files
(`training.files`) and the desktop app, whose process carries neither, raise and catch the same type;
`training.data` re-exports it.
"""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """Bad input or a broken dataset.

    `code` is a stable identifier that callers may branch on (`"empty_corpus"`, `"unreadable"`,
    `"binary"`, `"bad_jsonl"`, `"bad_manifest"`, `"hash_mismatch"`, `"out_of_range"`, ...);
    `str(error)` is one sentence a user can act on.

    >>> raise DataError("empty_corpus", "the sources hold no text")
    Traceback (most recent call last):
    training.data_error.DataError: the sources hold no text
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[type[DataError], tuple[str, str]]:
        # Survives pickling (multiprocessing, DataLoader workers) with its code intact.
        return (type(self), (self.code, str(self)))
