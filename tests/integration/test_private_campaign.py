"""A campaign on volunteers' own data (`data = "volunteer"`) trains end to end with real processes: a
coordinator, and two `commonweights volunteer run` processes that each chose a different folder of
their own text with `commonweights volunteer data add`. Every frame the volunteers send passes through
a recording relay, and none of them holds the volunteers' text or its tokens: only noised updates,
metrics without losses, and heartbeats without a loss. Each volunteer's privacy ledger counts the
updates it sent, and its ε is what the campaign's terms give for that count."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgpack
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from commonweights.cli import main
from tests.support.live import REPO, live_coordinator, poll, stop
from training.data import TokenDataset
from training.privacy_accounting import gaussian_epsilon
from volunteer_app.credentials import volunteer_data_dir
from volunteer_app.local_data import PREPARED_DIR
from volunteer_app.privacy_ledger import LEDGER_FILE, PrivacyLedger

pytestmark = pytest.mark.slow

WINDOW_TOKENS = 8  # a run of this many of a volunteer's tokens, found in a frame, would be a leak
TEXT_CHUNK = 48  # characters


class Relay:
    """A websocket relay on loopback that forwards both ways and keeps every frame the volunteer sends."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.sent: list[bytes] = []
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._pipe, "127.0.0.1", 0, max_size=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    async def _pipe(self, client: ServerConnection) -> None:
        async with connect(self.upstream, max_size=None) as coordinator:

            async def up() -> None:
                async for frame in client:
                    assert isinstance(frame, bytes), "a text frame"
                    self.sent.append(frame)
                    await coordinator.send(frame)

            async def down() -> None:
                async for frame in coordinator:
                    await client.send(frame)

            tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()

    def __enter__(self) -> Relay:
        self._thread.start()
        assert self._ready.wait(10), "the relay did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@contextmanager
def volunteer(folder: Path, url: str) -> Iterator[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "commonweights", "volunteer", "run", "--coordinator", url, "--threads", "1",
               "--config-dir", str(folder / "config"), "--cache-dir", str(folder / "cache"), "--quiet"]  # fmt: skip
    with (folder / "volunteer.log").open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        stop(process)


def own_files(folder: Path, names: tuple[str, ...]) -> str:
    """A volunteer's own text: some stdlib modules saved as notes; returns the text."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    folder.mkdir(parents=True)
    text = ""
    for name in names:
        body = (stdlib / name).read_text(encoding="utf-8")
        (folder / f"{name}.txt").write_text(body, encoding="utf-8")
        text += body
    return text


def leaks(frame: bytes, windows: set[bytes], width: int) -> bool:
    return any(frame[i : i + width] in windows for i in range(len(frame) - width + 1))


def test_a_campaign_on_volunteers_own_files_trains_and_no_frame_carries_their_data(
    tmp_path: Path, small_dataset: Path
) -> None:
    homes = [tmp_path / "alice", tmp_path / "bob"]
    texts = [
        own_files(homes[0] / "notes", ("argparse.py", "dataclasses.py")),
        own_files(homes[1] / "notes", ("ast.py", "inspect.py")),
    ]
    for home in homes:  # with no limit of their own: this campaign's noise is too small to promise anything
        command = ["volunteer", "data", "add", str(home / "notes"), "--config-dir", str(home / "config")]
        assert main([*command, "--max-epsilon", "inf"]) == 0

    # Noise this small promises nothing (ε is infinite): the point here is the path, not the privacy; the
    # cost of real noise levels is `commonweights bench private`'s to measure.
    z, clip, delta = 1e-4, 5.0, 1e-5
    spec = {
        "name": "notes", "dataset": "small", "model": "tiny", "token_budget": 3 * 2 * 6 * 4 * 32,
        "data": "volunteer",
        "privacy": {"clip_norm": clip, "noise_multiplier": z, "delta": delta},
        "codec": "int8",
        "inner": {"steps": 6, "batch_size": 4, "seq_len": 32, "warmup_steps": 0},
        "rounds": {"units_per_round": 2, "min_accepted": 2},
        "validation": {"replication_rate": 0.5},  # nothing to replicate: ignored
    }  # fmt: skip
    with live_coordinator(tmp_path, small_dataset) as live:
        campaign = live.api.post_campaign(spec)["id"]
        with Relay(live.ws) as relay, volunteer(homes[0], relay.url), volunteer(homes[1], relay.url):
            versions = poll(
                "version 2 with its holdout loss",
                lambda: [v for v in live.api.versions(campaign) if v["version"] >= 2 and v["holdout_loss"] is not None],
                timeout=600,
            )
        assert versions[0]["holdout_loss"] > 0
    frames = [msgpack.unpackb(frame, raw=False) for frame in relay.sent]
    submits = [f for f in frames if f["type"] == "submit"]
    assert len(submits) >= 4
    # Losses on the owner's data stay on the device: none in a submit, none in a heartbeat.
    assert all(f["metrics"]["losses"] == [] for f in submits)
    assert all(f["loss"] is None for f in frames if f["type"] == "progress")
    assert any(f["type"] == "hello" and f["capabilities"]["own_data"] for f in frames)

    # No frame carries the text (any 48-character run of it) or its tokens (any run of 8 token ids, as the
    # uint16 little-endian ids a slice would hold).
    text_windows: set[bytes] = set()
    token_windows: set[bytes] = set()
    for home, text in zip(homes, texts, strict=True):
        raw = text.encode()
        text_windows |= {raw[i : i + TEXT_CHUNK] for i in range(0, len(raw) - TEXT_CHUNK, 7)}
        copies = list((volunteer_data_dir(home / "config") / PREPARED_DIR).iterdir())
        assert len(copies) == 1, "one tokenized copy, made with the campaign's tokenizer"
        ids = TokenDataset.open(copies[0]).train_slice(0, TokenDataset.open(copies[0]).num_train_tokens)
        assert len(ids) > 1000
        packed = np.ascontiguousarray(ids.astype("<u2")).tobytes()
        width = 2 * WINDOW_TOKENS
        token_windows |= {packed[i : i + width] for i in range(0, len(packed) - width, 2)}
    for frame in relay.sent:
        assert not leaks(frame, text_windows, TEXT_CHUNK), "a frame holds the volunteer's text"
        assert not leaks(frame, token_windows, 2 * WINDOW_TOKENS), "a frame holds the volunteer's tokens"

    # Each volunteer counted its releases before they left, and its ε is the campaign's terms for that count.
    for home in homes:
        entries = PrivacyLedger(volunteer_data_dir(home / "config") / LEDGER_FILE).entries()
        assert len(entries) == 1 and entries[0].terms.noise_multiplier == z
        assert entries[0].releases >= 1
        assert entries[0].epsilon == pytest.approx(gaussian_epsilon(z, entries[0].releases, delta))
    ledgers = [PrivacyLedger(volunteer_data_dir(home / "config") / LEDGER_FILE) for home in homes]
    counted = sum(e.releases for ledger in ledgers for e in ledger.entries())
    updates = len({f["update_sha256"] for f in submits})  # a resent update is the same release
    # Counted before it leaves: a volunteer stopped between the two has counted one more than it sent.
    assert updates <= counted <= updates + len(homes)
