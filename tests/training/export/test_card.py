"""The model card: made from a campaign's records only, safe to render whatever the names say, with
its chart; the records' JSON form (what GET /api/campaigns/{id}/card sends) is checked on the way in."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.export import CampaignRecord, Contributor, ExportError, LossPoint, render_card, write_card
from training.export.card import CHART_FILE
from training.model import preset


def _record(**changes: object) -> CampaignRecord:
    values: dict[str, object] = {
        "name": "stdlib-tiny",
        "model": "tiny",
        "config": preset("tiny", vocab_size=512),
        "parameters": 381_600,
        "version": 3,
        "tokenizer": "byte-level BPE, 512 tokens",
        "tokens_trained": 30_720,
        "rounds_closed": 3,
        "codec": "int8",
        "outer_optimizer": "Nesterov SGD (lr 0.7, momentum 0.9)",
        "inner": "AdamW, 10 steps per work unit",
        "data_source": "the Python standard library",
        "dataset": "stdlib",
        "license": "Apache-2.0",
        "volunteers": 3,
        "total_credit": 4.0,
        "contributors": (Contributor("alice", 3.0, 20_000), Contributor("bob", 1.0, 10_720)),
        "losses": (
            LossPoint(0, 0, 6.25),
            LossPoint(1, 10_240, 5.5),
            LossPoint(2, 20_480, 5.1),
            LossPoint(3, 30_720, 4.9),
        ),
    }
    values.update(changes)
    return CampaignRecord(**values)  # type: ignore[arg-type]


def test_the_card_says_what_the_records_say() -> None:
    card = render_card(_record(), chart=True)
    assert card.startswith('---\nlicense: "apache-2.0"\n')
    for line in ("| Tokens trained | 30,720 |", "| Rounds (outer steps) | 3 |", "| Update codec | int8 |",
                 "| alice | 20,000 | 3 | 75.0% |", "| bob | 10,720 | 1 | 25.0% |", "| and 1 more | | | |",
                 "| 3 | 30,720 | 4.9000 |", f"]({CHART_FILE})"):  # fmt: skip
        assert line in card, line


def test_names_from_volunteers_cannot_inject_markup_into_the_card() -> None:
    card = render_card(_record(contributors=(Contributor("<img src=x onerror=alert(1)>|[x](javascript:1)", 1.0, 1),)),
                       chart=False)  # fmt: skip
    assert "<img" not in card and "](javascript" not in card
    assert "&lt;img src=x onerror=alert\\(1\\)&gt;\\|\\[x\\]\\(javascript:1\\)" in card
    linked = render_card(_record(description="1. see https://evil.example or www.evil.example, mail a@b.c ~~x~~"),
                         chart=False)  # fmt: skip
    for link in ("https://", "www.", "a@b"):
        assert link not in linked, f"{link} would turn into a link"
    assert "1\\. see" in linked and "\\~\\~x\\~\\~" in linked


def test_the_license_is_one_hugging_face_knows_or_other_with_its_name() -> None:
    assert 'license: "apache-2.0"' in render_card(_record(license="Apache-2.0"), chart=False)
    custom = render_card(_record(license="BigScience-OpenRAIL-M"), chart=False)
    assert 'license: "other"\nlicense_name: "bigscience-openrail-m"' in custom
    assert 'license: "unknown"' in render_card(_record(license=""), chart=False)


def test_the_chart_is_a_png_beside_the_card(tmp_path: Path) -> None:
    image = pytest.importorskip("matplotlib.image", reason="matplotlib is not installed (the export extra has it)")
    written = write_card(tmp_path, _record())
    assert [p.name for p in written] == ["README.md", CHART_FILE]
    pixels = image.imread(tmp_path / CHART_FILE)
    assert pixels.shape[:2] == (360, 640)
    assert pixels[..., :3].std() > 0.05, "something is drawn"
    assert write_card(tmp_path / ".", _record(losses=())) == [tmp_path / "README.md"], "no losses: no chart"
    assert "No version has a holdout loss yet." in (tmp_path / "README.md").read_text()


def test_records_round_trip_as_json_and_malformed_ones_are_refused() -> None:
    record = _record()
    assert CampaignRecord.from_dict(record.to_dict()) == record
    broken = record.to_dict() | {"config": {"vocab_size": -1}}
    with pytest.raises(ExportError, match="malformed"):
        CampaignRecord.from_dict(broken)
    with pytest.raises(ExportError, match="malformed"):
        CampaignRecord.from_dict(record.to_dict() | {"unexpected": 1})
    with pytest.raises(ExportError, match="version is not a int"):
        CampaignRecord.from_dict(record.to_dict() | {"version": "3"})
    with pytest.raises(ExportError, match="not a campaign name"):  # it names the files written
        CampaignRecord.from_dict(record.to_dict() | {"name": "../../etc/x"})
