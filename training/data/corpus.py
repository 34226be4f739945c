"""The embedded default corpus: this Python's own standard library sources.

Every machine that runs Commonweights has it, it is real text a small model can learn from, and
it costs nothing to ship. `ensure_default_dataset` prepares it once per set of options and Python
version into the user cache and reuses it while its manifest and shards verify.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import sys
import sysconfig
import time
from pathlib import Path

from training.data.dataset import TokenDataset
from training.data.errors import DataError
from training.data.manifest import FORMAT_VERSION
from training.data.prepare import prepare_dataset

# Bump when the selection below changes, so cached datasets built from the old one are not reused.
CORPUS_VERSION = 1
# A tenth of the documents: about 100k holdout tokens at the default 6 MB, enough to evaluate on.
DEFAULT_HOLDOUT_FRACTION = 0.1
_STALE_AFTER_S = 24 * 3600

# Test suites, bundled third-party code, generated tables (encodings, pydoc_data) and demos:
# large, repetitive or not the library itself.
_EXCLUDED_DIRS = frozenset(
    {
        "test",
        "tests",
        "idle_test",
        "idlelib",
        "site-packages",
        "dist-packages",
        "pydoc_data",
        "encodings",
        "lib2to3",
        "ensurepip",
        "turtledemo",
        "__pycache__",
        "__phello__",
    }
)


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def default_corpus_sources() -> list[Path]:
    """This Python's standard library `.py` files, in sorted order, without tests and bundled code.

    >>> files = default_corpus_sources()        # doctest: +SKIP
    >>> files[0].name                            # doctest: +SKIP
    '__future__.py'
    """
    root = stdlib_dir()
    files: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _EXCLUDED_DIRS and not d.startswith((".", "config-", "lib-dynload"))]
        files.extend(Path(folder, name) for name in names if name.endswith(".py"))
    if not files:
        raise DataError(
            "no_default_corpus",
            f"this Python has no standard library sources in {root} (a frozen or embedded build?); "
            "pass your own text files or folders to prepare.",
        )
    return sorted(files, key=lambda p: p.relative_to(root).parts)


def default_corpus_description() -> str:
    version = ".".join(str(v) for v in sys.version_info[:3])
    return f"embedded corpus: the Python {version} standard library ({stdlib_dir()})"


def default_cache_root() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("commonweights", appauthor=False))


def ensure_default_dataset(
    cache_dir: Path | None = None,
    *,
    max_bytes: int = 6_000_000,
    vocab_size: int = 4096,
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    progress: bool = True,
) -> Path:
    """The folder of the embedded corpus prepared with these options, preparing it if needed.

    >>> data = TokenDataset.open(ensure_default_dataset())    # doctest: +SKIP

    It lives in `<cache_dir>/datasets/stdlib-<hash>`, where `cache_dir` defaults to the user cache
    folder (platformdirs) and the hash covers the options and the Python version. A cached copy
    is reused when its manifest and shards verify; a broken one is prepared again. Processes that
    race to prepare it both succeed and agree on the result.
    """
    root = (Path(cache_dir) if cache_dir is not None else default_cache_root()) / "datasets"
    options = {
        "corpus": CORPUS_VERSION,
        "format": FORMAT_VERSION,
        "python": sys.version,
        "stdlib": str(stdlib_dir()),
        "tokenizer": "bpe",
        "vocab_size": vocab_size,
        "max_bytes": max_bytes,
        "holdout_fraction": holdout_fraction,
    }
    key = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]
    target = root / f"stdlib-{key}"
    if _verifies(target):
        return target

    _remove_stale_work(root)
    work = root / f".work-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        prepare_dataset(
            default_corpus_sources(),
            work / "dataset",
            tokenizer="bpe",
            vocab_size=vocab_size,
            holdout_fraction=holdout_fraction,
            max_bytes=max_bytes,
            progress=progress,
            source_description=default_corpus_description(),
        )
        if target.exists():
            if _verifies(target):
                return target  # another process finished first
            target.rename(work / "broken")  # removed with the work folder below
        try:
            (work / "dataset").rename(target)
        except OSError:
            if _verifies(target):
                return target  # another process won the rename
            raise
    except OSError as error:
        raise DataError(
            "write_failed", f"cannot write the default dataset in {root}: {error.strerror or error}."
        ) from error
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _remove_stale_work(root: Path) -> None:
    """Work folders of runs that crashed or were killed; a day is far longer than any live run."""
    with contextlib.suppress(OSError):
        for stale in root.glob(".work-*"):
            if time.time() - stale.stat().st_mtime > _STALE_AFTER_S:
                shutil.rmtree(stale, ignore_errors=True)


def _verifies(path: Path) -> bool:
    if not (path / "manifest.json").is_file():
        return False
    try:
        TokenDataset.open(path, verify=True)
    except DataError:
        return False
    return True
