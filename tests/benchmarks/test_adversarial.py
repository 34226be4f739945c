"""The attack bench's parts that need no coordinator: who attacks from where, and a NaN no encoder writes."""

from __future__ import annotations

import pytest
import torch

from benchmarks.adversarial import AGAIN, MIXED, Setup, campaign_name, lineup, parse_kinds
from benchmarks.adversaries import KINDS, Kind, poisoned, rest_base
from coordinator.campaign import CampaignSpec
from protocol.codecs import CODEC_NAMES, CodecConfig, CodecError, TensorSpec, decode, encode


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_a_poisoned_update_is_well_formed_but_holds_a_nan_the_decoder_refuses(codec: str) -> None:
    update = {"blocks.0.w": torch.randn(4, 8) + 2.0, "head.b": torch.randn(8)}
    specs = {name: TensorSpec(tuple(t.shape)) for name, t in update.items()}
    config = CodecConfig.from_name(codec)
    frame = encode(update, config)
    decode(frame, specs, max_bytes=len(frame), config=config)  # the original is fine
    bad = poisoned(frame)
    assert len(bad) == len(frame)
    with pytest.raises(CodecError) as refused:
        decode(bad, specs, max_bytes=len(bad), config=config)
    assert refused.value.code in ("non_finite_value", "non_finite_scale")


def test_clean_runs_have_no_attackers_and_a_kind_fills_its_slots() -> None:
    assert lineup(None, 2) == []
    slots = lineup(Kind.NOISE, 2)
    assert [s.kind for s in slots] == [Kind.NOISE, Kind.NOISE]
    assert len({s.address for s in slots}) == 2 and len({s.name for s in slots}) == 2


def test_a_colluding_pair_is_two_identities_on_one_address_sharing_a_folder() -> None:
    for count in (1, 2):
        a, b = lineup(Kind.COLLUDING, count)
        assert a.address == b.address and a.partner == b.partner is not None and a.name != b.name


def test_mixed_takes_every_kind_in_turn_each_from_its_own_address() -> None:
    slots = lineup(MIXED, len(KINDS) + 1, seed=3)  # a colluding pair takes two slots
    assert {s.kind for s in slots} == set(KINDS)
    singles = [s.address for s in slots if s.kind is not Kind.COLLUDING]
    assert len(singles) == len(set(singles))
    assert lineup(MIXED, 2, seed=3) == lineup(MIXED, 2, seed=3)  # seeded


def test_kinds_are_parsed_from_the_command_line_and_unknown_ones_named() -> None:
    assert parse_kinds("all") == [k.value for k in KINDS] + [MIXED]
    assert parse_kinds("nan, hog") == ["nan", "hog"]
    with pytest.raises(ValueError, match="sybil"):
        parse_kinds("nan,sybil")


def test_the_rest_base_comes_from_the_websocket_url() -> None:
    assert rest_base("ws://127.0.0.1:8470/ws") == "http://127.0.0.1:8470"
    assert rest_base("wss://example.org/ws") == "https://example.org"


def test_every_run_posts_a_campaign_the_coordinator_accepts() -> None:
    """The last run ("clean again") once crashed the whole benchmark with a name containing a space."""
    for label in ["clean", *(k.value for k in Kind), MIXED, AGAIN]:
        CampaignSpec.from_dict(Setup().spec(campaign_name(label)))
