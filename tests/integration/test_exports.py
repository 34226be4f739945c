"""The trained model leaves the coordinator: a campaign trained by the demo's pipeline (a coordinator
process, volunteer processes over WebSockets, DiLoCo rounds) is exported with `commonweights export`
and downloaded from the dashboard, and the files work in the tools people use; "Try it" generates
what the model generates locally."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from commonweights.cli import main
from tests.support.live import REPO, LiveCoordinator, live_coordinator, poll, stop
from training.checkpoint import load_weights
from training.data import TokenDataset
from training.data.tokenizer import load_tokenizer
from training.export.card import CHART_FILE
from training.generate import generate, model_from_weights
from training.model import GPT, ModelConfig

pytestmark = pytest.mark.slow

LOGITS_TOLERANCE = 1e-4
VOLUNTEERS = ("exports-volunteer-1", "exports-volunteer-2")
SPEC = {
    "name": "exported",
    "description": "A tiny model of Python source, trained for the export tests.",
    "license": "apache-2.0",
    "data_description": "Python's standard library sources, as this Python ships them (PSF license).",
    "dataset": "stdlib",
    "model": "tiny",
    "codec": "int8",
    "token_budget": 2 * 2 * 10 * 4 * 64,  # two rounds of two units
    "inner": {"steps": 10, "batch_size": 4, "seq_len": 64, "lr": 3e-3, "warmup_steps": 2},
    "outer": {"optimizer": "average"},
    "rounds": {"units_per_round": 2, "min_accepted": 2, "deadline_s": 300, "lease_s": 120},
    "validation": {"replication_rate": 0.0, "holdout_check_rate": 0.0},
}


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory, small_dataset: Path) -> Iterator[tuple[LiveCoordinator, int]]:
    tmp = tmp_path_factory.mktemp("exports")
    with live_coordinator(tmp, small_dataset) as live:
        campaign_id = int(live.api.post_campaign(SPEC)["id"])
        workers = []
        for name in VOLUNTEERS:
            folder = tmp / name
            folder.mkdir()
            command = [sys.executable, "-m", "commonweights", "volunteer", "run", "--coordinator", live.ws,
                       "--threads", "1", "--name", name, "--config-dir", str(folder / "config"),
                       "--cache-dir", str(folder / "cache"), "--data-dir", str(folder / "data"), "--quiet"]  # fmt: skip
            with (folder / "volunteer.log").open("wb") as log:
                workers.append(subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
        try:

            def finished() -> bool:
                detail = live.api.campaign(campaign_id)
                versions = live.api.versions(campaign_id)
                return detail["status"] == "finished" and all(v["holdout_loss"] is not None for v in versions)

            poll("the campaign to finish and every version to be evaluated", finished, timeout=400)
        finally:
            for worker in workers:
                stop(worker)
        yield live, campaign_id


def _model(live: LiveCoordinator, campaign_id: int) -> tuple[GPT, ModelConfig]:
    detail = live.api.campaign(campaign_id)
    config = ModelConfig.from_dict(detail["model_config"])
    return model_from_weights(load_weights(live.api.checkpoint(campaign_id)), config), config


def _text(small_dataset: Path) -> tuple[str, list[int]]:
    data = TokenDataset.open(small_dataset)
    ids = data.holdout_slice(0, 64).tolist()  # the campaign's context: its seq_len
    return data.tokenizer().decode(ids), ids


def test_export_from_the_coordinator_makes_a_folder_transformers_runs_with_a_card_from_the_records(
    campaign: tuple[LiveCoordinator, int], small_dataset: Path, tmp_path: Path
) -> None:
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (the dev extra has it)")
    live, campaign_id = campaign
    out = tmp_path / "hf"
    assert main(["export", "--coordinator", live.url, "--campaign", str(campaign_id), "--format", "hf",
                 "--out", str(out)]) == 0  # fmt: skip
    model, _ = _model(live, campaign_id)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    text, ids = _text(small_dataset)
    assert tokenizer(text).input_ids[: len(ids)] == ids
    with torch.no_grad():
        difference = (model(torch.tensor([ids])) - hf(torch.tensor([ids])).logits).abs().max()
    assert float(difference) <= LOGITS_TOLERANCE

    card = (out / "README.md").read_text()
    detail = live.api.campaign(campaign_id)
    assert card.startswith('---\nlicense: "apache-2.0"') and 'library_name: "transformers"' in card
    assert f"| Tokens trained | {detail['tokens_trained']:,} |" in card
    assert f"| Rounds (outer steps) | {detail['version']} |" in card
    assert all(name.replace("-", "\\-") in card or name in card for name in VOLUNTEERS), "the volunteers and credit"
    assert "% |" in card and "Python 3" in card, "credit shares, and the data source as the dataset describes it"
    assert "as this Python ships them \\(PSF license\\)" in card, "the data as the lead described it"
    assert f"![Holdout loss by tokens trained]({CHART_FILE})" in card
    from matplotlib.image import imread

    chart = imread(out / CHART_FILE)
    assert chart.shape[0] >= 200 and chart.shape[1] >= 300, "a chart, not an empty image"
    losses = [v["holdout_loss"] for v in live.api.versions(campaign_id)]
    assert all(f"{loss:.4f}" in card for loss in losses), "every version's holdout loss"


def test_export_writes_gguf_and_onnx_that_their_readers_load(
    campaign: tuple[LiveCoordinator, int], small_dataset: Path, tmp_path: Path
) -> None:
    gguf = pytest.importorskip("gguf", reason="gguf is not installed (the export extra has it)")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    live, campaign_id = campaign
    model, config = _model(live, campaign_id)
    version = live.api.campaign(campaign_id)["version"]
    for fmt in ("gguf", "onnx"):
        assert main(["export", "--coordinator", live.url, "--campaign", str(campaign_id), "--format", fmt,
                     "--gguf-type", "q8_0", "--out", str(tmp_path)]) == 0  # fmt: skip
    reader = gguf.GGUFReader(tmp_path / f"exported-v{version}-q8_0.gguf")
    assert len(reader.tensors) == 2 + 9 * config.n_layer
    assert reader.fields["general.license"].contents() == "apache-2.0"
    session = ort.InferenceSession(str(tmp_path / f"exported-v{version}.onnx"), providers=["CPUExecutionProvider"])
    _, ids = _text(small_dataset)
    (logits,) = session.run(["logits"], {"input_ids": np.array([ids])})
    with torch.no_grad():
        assert float(np.abs(logits - model(torch.tensor([ids])).numpy()).max()) <= LOGITS_TOLERANCE
    assert (tmp_path / "README.md").exists(), "the card goes with every format"


def test_the_dashboard_download_is_built_once_per_version_and_loads(
    campaign: tuple[LiveCoordinator, int], small_dataset: Path, tmp_path: Path
) -> None:
    live, campaign_id = campaign
    anonymous = live.api.with_token(None)
    version = live.api.campaign(campaign_id)["version"]
    first = anonymous.export(campaign_id, "hf")
    kept = live.data_dir / "exports" / str(campaign_id) / str(version) / f"exported-v{version}-hf.zip"
    assert kept.is_file() and kept.read_bytes() == first, "kept on the coordinator's disk"
    assert anonymous.export(campaign_id, "hf", version) == first, "served again, not rebuilt"
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path)
    folder = f"exported-v{version}"
    assert {
        f"{folder}/{n}" for n in ("config.json", "model.safetensors", "tokenizer.json", "README.md", CHART_FILE)
    } <= names
    weights = load_weights((tmp_path / folder / "model.safetensors").read_bytes())
    assert (
        weights["model.embed_tokens.weight"].shape[0]
        == json.loads((tmp_path / folder / "config.json").read_text())["vocab_size"]
    )
    status, body = anonymous.call("GET", f"/api/campaigns/{campaign_id}/exports/pickle")
    assert status == 404 and "hf" in body["error"]["message"]
    status, body = anonymous.call("GET", f"/api/campaigns/{campaign_id}/exports/hf?version=999")
    assert status == 404
    # Earlier versions are built for leads and admins only: anyone could otherwise fill the disk.
    status, body = anonymous.call("GET", f"/api/campaigns/{campaign_id}/exports/gguf-f16?version=1")
    assert status == 403 and "latest version" in body["error"]["message"]
    assert live.api.export(campaign_id, "gguf-f16", 1)[:4] == b"GGUF"


def test_the_campaign_page_offers_the_downloads_and_a_try_it_box(
    campaign: tuple[LiveCoordinator, int], tmp_path: Path
) -> None:
    from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, needs_chromium

    sync_api = needs_chromium()
    live, campaign_id = campaign
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(base_url=live.url, accept_downloads=True).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"/campaigns/{campaign_id}")
            links = page.locator("#exports a")
            links.first.wait_for()
            assert links.count() == 4
            with page.expect_download() as download:
                page.locator('#exports a[data-format="gguf-q8_0"]').click()
            saved = tmp_path / download.value.suggested_filename
            download.value.save_as(saved)
            assert saved.name.endswith("-q8_0.gguf") and saved.read_bytes()[:4] == b"GGUF"
            page.fill("#try-prompt", "import ")
            page.fill("#try-tokens", "8")
            page.click("#try-go")
            page.locator("#try-output .continuation").wait_for()
            assert page.locator("#try-output .prompt").inner_text() == "import "
            assert "tokens in" in page.locator("#try-note").inner_text()
            assert errors == []
        finally:
            browser.close()


def test_try_it_generates_what_the_model_generates_here_and_is_rate_limited(
    campaign: tuple[LiveCoordinator, int], tmp_path: Path
) -> None:
    """Runs last in this module: it spends this client address's tries for the minute."""
    live, campaign_id = campaign
    anonymous = live.api.with_token(None)
    model, _ = _model(live, campaign_id)
    answer = anonymous.generate(campaign_id, "def main(", max_new_tokens=16, temperature=0)
    path = tmp_path / "tokenizer.json"
    path.write_text(anonymous.tokenizer(campaign_id))
    local = generate(model, load_tokenizer(path), "def main(", max_new_tokens=16)
    assert answer["text"] == local.text and answer["new_tokens"] == len(local.ids)
    assert answer["version"] == live.api.campaign(campaign_id)["version"]

    status, body = anonymous.call("POST", f"/api/campaigns/{campaign_id}/generate", body={"prompt": "x" * 501})
    assert status == 400 and "prompt" in body["error"]["message"]
    status, body = anonymous.call(
        "POST", f"/api/campaigns/{campaign_id}/generate", body={"prompt": "a", "max_new_tokens": 10_000}
    )
    assert status == 400 and "max_new_tokens" in body["error"]["message"]
    answers = [
        anonymous.call("POST", f"/api/campaigns/{campaign_id}/generate", body={"prompt": "a", "max_new_tokens": 1})
        for _ in range(10)
    ]
    statuses = [status for status, _ in answers]
    assert 429 in statuses and set(statuses[statuses.index(429) :]) == {429}, statuses
    assert statuses.count(200) <= 9, "at most ten tries a minute per client address, the first one included"
    assert "at most 10 tries" in answers[-1][1]["error"]["message"]
