"""`commonweights bench private`: the cost of training on volunteers' own data with differential privacy.

A real coordinator process and V real `commonweights volunteer run` processes. The text: stdlib modules,
split into V disjoint groups, each group a volunteer's own folder (`commonweights volunteer data add`).
Runs, each a fresh coordinator and the same token budget:

- **served**: a `data = "coordinator"` campaign on a dataset prepared from all V folders with the same
  tokenizer: the usual way, the text on the coordinator;
- **private, ε = ∞**: `data = "volunteer"`, each volunteer trains on its own folder, updates clipped
  to C and no noise;
- **private, ε = 8** and **ε = 2**: the noise multiplier z that spends exactly that ε (δ = 1e-5) over the
  updates each volunteer sends in the run (`noise_multiplier_for`), and that ε as the budget.

Every run's figure is the holdout loss of its last version, measured here on one holdout for all runs
(the base dataset's, which no volunteer holds), next to version 0's; the gap is what
privacy costs at equal tokens.
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks.report import machine_line, markdown_table, write_section
from coordinator.local import start_coordinator, stop
from training.checkpoint import load_weights
from training.data import TokenDataset, ensure_default_dataset, prepare_dataset
from training.data.manifest import TOKENIZER_NAME
from training.evaluate import evaluate
from training.generate import model_from_weights
from training.model import ModelConfig, build_model, preset
from training.privacy_accounting import gaussian_epsilon, noise_multiplier_for

__all__ = ["run_bench_private"]

DELTA = 1e-5
HOLDOUT_BATCHES = 64  # of batch_size × seq_len tokens
STALL_S = 120.0  # no new version for this long (or 5× the slowest round so far): the run has stalled
MODULES = ("argparse.py", "ast.py", "dataclasses.py", "typing.py", "inspect.py", "enum.py", "pathlib.py",
           "subprocess.py", "tarfile.py", "zipfile/__init__.py", "difflib.py", "pickle.py")  # fmt: skip


@dataclass(frozen=True)
class Setup:
    volunteers: int = 3
    rounds: int = 8
    steps: int = 20
    batch_size: int = 4
    seq_len: int = 64
    clip_norm: float = 10.0

    @property
    def units(self) -> int:
        return self.rounds * self.volunteers

    @property
    def updates_each(self) -> int:
        return math.ceil(self.units / self.volunteers)

    @property
    def budget(self) -> int:
        return self.units * self.steps * self.batch_size * self.seq_len


@dataclass(frozen=True)
class Outcome:
    name: str
    epsilon: float
    z: float
    first_loss: float
    last_loss: float
    versions: int
    seconds: float
    updates: int
    ended: str  # "finished", or why the run was stopped before its budget was spent


def folders(work: Path, count: int) -> list[Path]:
    """`count` volunteers' own folders, the modules dealt out in turn."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    homes = [work / f"volunteer-{i}" for i in range(count)]
    for i, name in enumerate(MODULES):
        source = stdlib / name
        if source.is_file():
            notes = homes[i % count] / "notes"
            notes.mkdir(parents=True, exist_ok=True)
            (notes / f"{name.replace('/', '_')}.txt").write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    return homes


@contextmanager
def volunteers(homes: list[Path], url: str) -> Iterator[None]:
    with ExitStack() as stack:
        processes = []
        for home in homes:
            log = stack.enter_context((home / "volunteer.log").open("ab"))
            command = [sys.executable, "-m", "commonweights", "volunteer", "run", "--coordinator", url,
                       "--threads", "1", "--config-dir", str(home / "config"),
                       "--cache-dir", str(home / "cache")]  # fmt: skip
            processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
        try:
            yield
        finally:
            for process in processes:
                stop(process)


def one_run(name: str, spec: dict[str, Any], base: Path, served: Path, homes: list[Path], work: Path,
            epsilon: float, z: float, holdout: Holdout, progress: Progress) -> Outcome:  # fmt: skip
    task = progress.add_task(name, total=spec["token_budget"])
    data_dir = work / f"coordinator-{name}"
    shutil.rmtree(data_dir, ignore_errors=True)
    for home in homes:  # each run starts from a fresh identity and an empty ledger and cache
        for part in ("cache", "config/data", "config/credentials.toml"):
            target = home / part
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    began = time.monotonic()
    logs = {home: _size(home / "volunteer.log") for home in homes}
    local = start_coordinator(data_dir, datasets={"base": base, "served": served}, log=work / f"{name}.log")
    try:
        api = local.api
        campaign = api.post_campaign(spec)["id"]
        ended = "finished"
        with volunteers(homes, local.ws_url):
            latest, since, longest = -1, time.monotonic(), 0.0
            while True:
                info = api.campaign(campaign)
                progress.update(task, completed=min(spec["token_budget"], int(info.get("tokens_trained", 0))))
                versions = api.versions(campaign)
                if info["status"] == "finished" and all(v["holdout_loss"] is not None for v in versions):
                    break
                now = time.monotonic()
                if len(versions) - 1 > latest:
                    latest, longest, since = len(versions) - 1, max(longest, now - since), now
                elif now - since > max(STALL_S, 5 * longest):
                    # A version nobody can train (the noise wrecked it: local training diverges on it)
                    # never gets a successor; the run ends there instead of spinning.
                    diverged = sum(_diverged(home / "volunteer.log", logs[home]) for home in homes)
                    ended = f"stalled at v{latest} ({diverged} units diverged)"
                    break
                if now - began > 1800:
                    raise RuntimeError(f"{name}: no end after 30 minutes; see {work / (name + '.log')}")
                time.sleep(1.0)
        seconds = time.monotonic() - began
        updates = sum(int(row.get("units", 0)) for row in api.leaderboard(campaign))
        last = max(int(v["version"]) for v in versions)
        config = ModelConfig.from_dict(info["model_config"])
        first_loss, last_loss = (holdout.loss(api.checkpoint(campaign, v), config) for v in (0, last))
    finally:
        stop(local.process)
    progress.update(task, completed=spec["token_budget"])
    return Outcome(name, epsilon, z, first_loss, last_loss, last, seconds, updates, ended)


@dataclass(frozen=True)
class Holdout:
    """The one holdout every run is scored on: the base dataset's, which no volunteer holds (the
    served campaign's own holdout is another text, so the coordinator's figures don't compare)."""

    tokens: npt.NDArray[np.int64]
    batch_size: int
    seq_len: int

    @classmethod
    def of(cls, dataset: Path, setup: Setup) -> Holdout:
        data = TokenDataset.open(dataset)
        span = setup.batch_size * setup.seq_len
        count = min(HOLDOUT_BATCHES, (data.num_holdout_tokens - 1) // span)
        return cls(data.holdout_slice(0, count * span + 1), setup.batch_size, setup.seq_len)

    def loss(self, checkpoint: bytes, config: ModelConfig) -> float:
        model = model_from_weights(load_weights(checkpoint), config)
        return evaluate(model, self.tokens, batch_size=self.batch_size, seq_len=self.seq_len)


def model_parameters(dataset: Path) -> int:
    """d: how many numbers one update of the `tiny` model on `dataset`'s vocabulary carries."""
    config = preset("tiny", vocab_size=TokenDataset.open(dataset).manifest.vocab_size)
    return sum(p.numel() for p in build_model(config, device="meta").parameters())


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _diverged(log: Path, start: int) -> int:
    """Units this run's volunteer gave back because its training diverged (its log past `start`)."""
    with log.open("rb") as file:
        file.seek(start)
        return file.read().count(b"abandoned (diverged)")


def run_bench_private(args: argparse.Namespace) -> int:
    setup = Setup(volunteers=args.volunteers, rounds=args.rounds, steps=args.inner_steps, clip_norm=args.clip_norm)
    console = Console(stderr=True)
    work = Path(tempfile.mkdtemp(prefix="bench-private-"))
    try:
        base = ensure_default_dataset(work / "cache", max_bytes=1_500_000, vocab_size=1024, progress=False)
        homes = folders(work, setup.volunteers)
        served = work / "served"
        texts = sorted(work.glob("volunteer-*/notes/*.txt"))
        prepare_dataset(texts, served, tokenizer_file=base / TOKENIZER_NAME, progress=False,
                        source_description="the volunteers' folders, all on the coordinator")  # fmt: skip
        for home in homes:
            subprocess.run([sys.executable, "-m", "commonweights", "volunteer", "data", "add", str(home / "notes"),
                            "--config-dir", str(home / "config"), "--max-epsilon", "inf"],  # ε = ∞ is a run too
                           check=True, capture_output=True)  # fmt: skip
        common: dict[str, Any] = {
            "model": "tiny", "token_budget": setup.budget, "codec": "int8",
            "inner": {"steps": setup.steps, "batch_size": setup.batch_size, "seq_len": setup.seq_len},
            "rounds": {"units_per_round": setup.volunteers, "min_accepted": setup.volunteers},
            "validation": {"replication_rate": 0.0},
        }  # fmt: skip
        runs: list[tuple[str, dict[str, Any], float, float]] = [
            ("served", common | {"name": "served", "dataset": "served"}, math.nan, math.nan)
        ]
        for epsilon in args.epsilons:
            z = noise_multiplier_for(epsilon, DELTA, setup.updates_each)
            privacy = {"clip_norm": setup.clip_norm, "noise_multiplier": z, "delta": DELTA}
            if math.isfinite(epsilon):
                privacy["epsilon_budget"] = epsilon
            name = "private-eps-inf" if math.isinf(epsilon) else f"private-eps-{epsilon:g}"
            spec = common | {"name": name, "dataset": "base", "data": "volunteer", "privacy": privacy}
            runs.append((name, spec, epsilon, z))
        with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console) as bar:
            holdout = Holdout.of(base, setup)
            outcomes = [
                one_run(name, spec, base, served, homes, work, eps, z, holdout, bar) for name, spec, eps, z in runs
            ]
        train_tokens = TokenDataset.open(served).num_train_tokens
        params = model_parameters(base)
        holdout_tokens = len(holdout.tokens) - 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    body = report(setup, outcomes, train_tokens, params, holdout_tokens)
    print(body)
    write_section(args.output, "private", body)
    return 0


def report(setup: Setup, outcomes: list[Outcome], train_tokens: int, params: int, holdout_tokens: int) -> str:
    served = outcomes[0].last_loss
    rows = []
    for o in outcomes:
        eps = "—" if math.isnan(o.epsilon) else ("∞" if math.isinf(o.epsilon) else f"{o.epsilon:g}")
        spent = "—" if math.isnan(o.z) else _eps(gaussian_epsilon(o.z, setup.updates_each, DELTA))
        z = "—" if math.isnan(o.z) else f"{o.z:.3f}"
        ratio = "—" if math.isnan(o.z) else f"{2 * o.z * math.sqrt(params):,.0f}"
        rows.append([o.name, eps, z, spent, ratio, _loss(o.first_loss), _loss(o.last_loss),
                     _loss(o.last_loss - served, sign="+"), str(o.versions), o.ended, f"{o.seconds:.0f}"])  # fmt: skip
    table = markdown_table(
        ["run", "target ε", "z", "ε after the run's updates", "noise norm / C", "holdout v0", "holdout last",
         "gap to served", "versions", "ended", "seconds"], rows)  # fmt: skip
    return (
        "## Training on volunteers' own data, with differential privacy (`commonweights bench private`)\n\n"
        f"{machine_line()}\n\n"
        f"A real coordinator process and {setup.volunteers} real volunteer processes on loopback, `tiny` model, "
        f"{setup.rounds} rounds of {setup.volunteers} units (H = {setup.steps} steps of {setup.batch_size}×"
        f"{setup.seq_len} tokens), int8 updates, the same token budget in every run. The text: {len(MODULES)} "
        f"stdlib modules dealt out to the volunteers ({train_tokens} training tokens in all). *served*: the "
        "usual campaign, the folders prepared into one dataset on the coordinator with the same tokenizer. "
        f'*private*: `data = "volunteer"`, each volunteer trains on its own folder only; updates clipped to '
        f"C = {setup.clip_norm:g} and noised on the device with z chosen so that the "
        f"{setup.updates_each} updates a volunteer sends spend the target ε (δ = {DELTA:g}). Holdout: the first "
        f"{holdout_tokens:,} tokens of the base dataset's holdout, which no volunteer holds, scored by the bench on "
        "each run's first and last checkpoint (the served campaign's own holdout is other text).\n\n"
        f"{table}\n\n"
        "Target: report the gap at ε = ∞, 8 and 2 (no threshold was set). Noise is added on each volunteer's "
        "device (local differential privacy): it protects the text from the coordinator too, and costs √n more "
        "noise than adding it once to the aggregate of n volunteers (central DP-FedAvg), which this release does "
        f"not do. *noise norm / C*: the expected norm of one update's noise, z·2C·√d for the model's d = {params:,} "
        "parameters, against the clipping norm C that bounds the update itself — the factor by which noise "
        "outweighs the signal in each update before averaging. *ended*: `stalled` when no volunteer could train "
        "the latest version any more (its local loss diverged), so the run stopped there."
    )


def _loss(value: float, sign: str = "") -> str:
    """Losses to 3 decimals; a wrecked model's huge loss in 3 significant figures."""
    return f"{value:{sign}.3f}" if abs(value) < 1000 else f"{value:{sign}.3g}"


def _eps(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:.2f}"
