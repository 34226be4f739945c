"""Benchmark results in docs/benchmarks.md: each benchmark owns one marked section of the file.

    >>> write_section(Path("docs/benchmarks.md"), "diloco", markdown)

A section sits between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`; rewriting one leaves the
others as they were, so each benchmark can be re-run on its own.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import torch

from training.atomic_write import write_atomically

__all__ = ["machine_line", "markdown_table", "write_section"]

HEADER = "# Benchmarks\n\nProduced by `commonweights bench …`; each section is rewritten by its own command.\n"


def write_section(path: Path, name: str, body: str) -> None:
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    write_atomically(path, text, mode=0o644)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line() -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"Measured {when} on {platform.machine()} with {os.cpu_count()} CPU cores, "
        f"{torch.get_num_threads()} torch threads, PyTorch {torch.__version__}, Python {platform.python_version()}."
    )
