"""The one exception every codec raises, with a machine-readable code."""

from __future__ import annotations


class CodecError(ValueError):
    """A tensor frame or codec setting was rejected.

    ``code`` is a short machine-readable tag (``"truncated"``, ``"shape_mismatch"``, ...) that the
    coordinator forwards to the volunteer; ``str(error)`` is a sentence a person can act on.

        >>> err = CodecError("truncated", "The frame ends after 12 of 40 bytes.")
        >>> (err.code, str(err))
        ('truncated', 'The frame ends after 12 of 40 bytes.')
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[type[CodecError], tuple[str, str]]:
        return (type(self), (self.code, str(self)))
