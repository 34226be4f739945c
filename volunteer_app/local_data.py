"""The volunteer's own files, for campaigns that train on volunteers' data (issue 16): which folders and files
were chosen, what in them would be used and how much, and the tokenized copy made with a campaign's
tokenizer. Nothing here sends anything: the files and their tokens stay on this machine.

    local = LocalData(config_dir, data_dir)
    local.add(Path("~/notes").expanduser())          # remembered in local-data.toml
    local.inventory(DataRules())                    # what would be used, and what is left out and why
    local.prepare(tokenizer_file, DataRules())       # a dataset folder: train and holdout token shards
    local.remove(Path("~/notes").expanduser())       # revoked: forgotten, and every tokenized copy deleted
    local.set_max_epsilon(4.0)                       # the most privacy any one campaign may spend (inf: any)

The tokenized copy is an ordinary dataset folder (training.data) under `data_dir/local-data/`, one per
tokenizer, with its own holdout split (5 % of the documents, by content). It is rebuilt when the chosen
files change (their paths, sizes and modification times) and deleted whenever a source is removed,
since it holds that source's text.

`max_epsilon` is the owner's own limit on top of each campaign's promise: a campaign whose ε budget is
larger (or unlimited) gets no update from these files, whatever it states. 10 unless the owner changes it.

Importing this module imports neither numpy, tokenizers nor torch (only `prepare` loads `training.data`):
the desktop app's process, which carries none of them, shows the choices and the inventory.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import tomli_w

from training.atomic_write import write_atomically
from training.data_error import DataError
from training.files import find_files

if TYPE_CHECKING:
    from training.data import DatasetManifest

__all__ = ["DEFAULT_MAX_EPSILON", "FILE_NAME", "DataRules", "Inventory", "LocalData", "LocalDataError", "Skipped"]

FILE_NAME = "local-data.toml"
PREPARED_DIR = "local-data"
FINGERPRINT = "sources.json"
HOLDOUT_FRACTION = 0.05
MAX_SOURCES = 256
DEFAULT_MAX_EPSILON = 10.0


class LocalDataError(ValueError):
    """A source that can't be used, or a prepared copy that can't be made; the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DataRules:
    """What a campaign accepts of a volunteer's files (the lead sets these)."""

    kinds: tuple[str, ...] = (".txt", ".md", ".jsonl")
    max_file_bytes: int = 64 << 20
    max_total_bytes: int = 1 << 30
    min_tokens: int = 0  # fewer training tokens than this and the copy is refused (a unit needs them)


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


@dataclass(frozen=True)
class Inventory:
    """What the chosen sources hold for a campaign's rules."""

    files: tuple[tuple[Path, int], ...]  # (file, bytes) that would be used
    skipped: tuple[Skipped, ...] = ()
    total_bytes: int = 0

    def fingerprint(self) -> str:
        """Changes whenever a used file is added, removed, resized or rewritten."""
        entries = [[str(path), size, path.stat().st_mtime_ns] for path, size in self.files]
        return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


@dataclass
class LocalData:
    config_dir: Path
    data_dir: Path
    sources: list[Path] = field(default_factory=list)
    max_epsilon: float = DEFAULT_MAX_EPSILON

    def __post_init__(self) -> None:
        self.sources, self.max_epsilon = self._read()

    def set_max_epsilon(self, value: float) -> None:
        """The most ε any one campaign may spend of these files (inf: whatever a campaign states)."""
        if not value > 0:
            raise LocalDataError("bad_limit", f"the privacy limit must be an ε above 0 (or inf), got {value}")
        self.max_epsilon = float(value)
        self._write()

    def accepts(self, epsilon_budget: float) -> bool:
        """Whether a campaign with this ε budget (inf: none) may train on these files."""
        return epsilon_budget <= self.max_epsilon

    def describe_limit(self) -> str:
        if math.isinf(self.max_epsilon):
            return "campaigns may spend any amount of privacy, even with no noise"
        return f"each campaign may spend at most ε = {self.max_epsilon:g} of privacy"

    @property
    def path(self) -> Path:
        return self.config_dir / FILE_NAME

    def add(self, source: Path) -> None:
        """Choose a folder or a file (kept as an absolute path)."""
        source = source.expanduser().absolute()
        if not source.exists():
            raise LocalDataError("missing", f"{source} does not exist")
        if source not in self.sources:
            if len(self.sources) >= MAX_SOURCES:
                raise LocalDataError("too_many", f"at most {MAX_SOURCES} folders and files can be chosen")
            self.sources.append(source)
            self._write()

    def remove(self, source: Path) -> bool:
        """Revoke a source: it is forgotten and every tokenized copy is deleted. False if it wasn't chosen."""
        source = source.expanduser().absolute()
        if source not in self.sources:
            return False
        self.sources.remove(source)
        self._write()
        shutil.rmtree(self.data_dir / PREPARED_DIR, ignore_errors=True)
        return True

    def inventory(self, rules: DataRules) -> Inventory:
        """The files that would be used under `rules`, and those left out with the reason."""
        files: list[tuple[Path, int]] = []
        skipped: list[Skipped] = []
        total = 0
        for source in self.sources:
            try:
                found = find_files([source])
            except DataError as error:
                skipped.append(Skipped(source, str(error)))
                continue
            for path in found:
                size = path.stat().st_size
                if path.suffix.lower() not in rules.kinds:
                    skipped.append(Skipped(path, f"this campaign takes {', '.join(rules.kinds)} files"))
                elif size > rules.max_file_bytes:
                    skipped.append(Skipped(path, f"over the campaign's {rules.max_file_bytes} bytes per file"))
                elif total + size > rules.max_total_bytes:
                    skipped.append(Skipped(path, f"past the campaign's {rules.max_total_bytes} bytes in all"))
                elif any(path == used for used, _ in files):
                    continue
                else:
                    files.append((path, size))
                    total += size
        return Inventory(tuple(files), tuple(skipped), total)

    def prepare(self, tokenizer_file: Path, rules: DataRules) -> tuple[Path, DatasetManifest]:
        """The tokenized copy for this tokenizer (made, or remade if the files changed): folder and manifest."""
        from training.data import DatasetManifest, prepare_dataset  # numpy and tokenizers: not in the app's process

        inventory = self.inventory(rules)
        if not inventory.files:
            raise LocalDataError("no_files", "none of the chosen folders and files holds text this campaign takes")
        digest = hashlib.sha256(tokenizer_file.read_bytes()).hexdigest()[:16]
        out = self.data_dir / PREPARED_DIR / digest
        fingerprint = inventory.fingerprint()
        if (out / FINGERPRINT).is_file() and (out / FINGERPRINT).read_text() == fingerprint:
            manifest = DatasetManifest.from_json((out / "manifest.json").read_text())
        else:
            shutil.rmtree(out, ignore_errors=True)
            try:
                manifest = prepare_dataset(
                    [path for path, _ in inventory.files],
                    out,
                    tokenizer_file=tokenizer_file,
                    holdout_fraction=HOLDOUT_FRACTION,
                    progress=False,
                    source_description=f"this volunteer's own files ({len(inventory.files)})",
                )
            except DataError as error:
                raise LocalDataError(error.code, str(error)) from None
            write_atomically(out / FINGERPRINT, fingerprint)
        if manifest.train_tokens < rules.min_tokens:
            raise LocalDataError(
                "too_little",
                f"the chosen files hold {manifest.train_tokens} training tokens; this campaign needs at least "
                f"{rules.min_tokens} (add text)",
            )
        return out, manifest

    def _read(self) -> tuple[list[Path], float]:
        try:
            raw = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return [], DEFAULT_MAX_EPSILON
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise LocalDataError("unreadable", f"can't read {self.path}: {error}") from None
        listed = raw.get("sources", [])
        if not isinstance(listed, list) or not all(isinstance(s, str) for s in listed):
            raise LocalDataError("unreadable", f"{self.path}: sources must be a list of paths")
        limit = raw.get("max_epsilon", DEFAULT_MAX_EPSILON)
        if isinstance(limit, bool) or not isinstance(limit, int | float) or not limit > 0:
            raise LocalDataError("unreadable", f"{self.path}: max_epsilon must be a number above 0, or inf")
        return [Path(s) for s in listed[:MAX_SOURCES]], float(limit)

    def _write(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        text = (
            "# The folders and files this volunteer chose to train on. They never leave this machine.\n"
            "# max_epsilon: the most privacy (ε) any one campaign may spend of them; inf for no limit.\n\n"
        )
        document = {"max_epsilon": self.max_epsilon, "sources": [str(s) for s in self.sources]}
        write_atomically(self.path, text + tomli_w.dumps(document))
