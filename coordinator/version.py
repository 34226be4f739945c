"""The coordinator's release, as installed (what `welcome` and /api/health report)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["SERVER_VERSION"]

try:
    SERVER_VERSION = version("commonweights")
except PackageNotFoundError:  # running from a source tree that was never installed
    SERVER_VERSION = "0.0.0+source"
