from __future__ import annotations

import pytest

from coordinator.campaign import CampaignSpec, SpecError

GOOD = """
name = "stdlib-tiny"
model = "tiny"
dataset = "stdlib"
token_budget = 1_000_000
codec = { name = "topk", topk_fraction = 0.02 }

[inner]
steps = 20
batch_size = 4
seq_len = 64
lr = 0.003

[outer]
optimizer = "nesterov"
lr = 0.7

[rounds]
units_per_round = 3
min_accepted = 2
deadline_s = 120
"""


def test_a_good_spec_parses_with_defaults_filled_in() -> None:
    spec = CampaignSpec.from_toml(GOOD)
    assert spec.inner.steps == 20 and spec.inner.grad_accum == 1
    assert spec.codec.name == "topk" and spec.codec.topk_fraction == 0.02
    assert spec.rounds.staleness_bound == 2
    assert spec.validation.replication_rate == 0.1
    assert spec.inner.tokens_per_unit == 20 * 4 * 64


def test_spec_round_trips_through_its_dict_form() -> None:
    spec = CampaignSpec.from_toml(GOOD)
    assert CampaignSpec.from_dict(spec.to_dict()) == spec


def test_budget_sets_rounds_and_the_schedule_length() -> None:
    spec = CampaignSpec.from_toml(GOOD)
    per_round = 20 * 4 * 64 * 3
    assert spec.total_rounds == -(-1_000_000 // per_round)
    assert spec.schedule_steps == spec.total_rounds * 20


def test_a_bad_spec_is_refused_with_every_problem_listed() -> None:
    bad = """
name = "has spaces"
model = "gigantic"
dataset = "stdlib"
token_budget = -5
colour = "blue"
codec = "zip"

[inner]
steps = 0
seq_len = "long"

[outer]
optimizer = "lion"

[rounds]
units_per_round = 2
min_accepted = 5
"""
    with pytest.raises(SpecError) as caught:
        CampaignSpec.from_toml(bad)
    problems = "\n".join(caught.value.problems)
    for expected in ("colour: unknown setting", "codec:", "inner.seq_len: expected an integer"):
        assert expected in problems
    # Type problems stop construction; once types are right, range problems are listed together.
    fixed = (
        bad.replace('seq_len = "long"', "seq_len = 64")
        .replace('codec = "zip"', 'codec = "int8"')
        .replace('colour = "blue"\n', "")
    )
    with pytest.raises(SpecError) as caught:
        CampaignSpec.from_toml(fixed)
    problems = "\n".join(caught.value.problems)
    for expected in (
        "name must be",
        "model must be one of tiny",
        "token_budget must be positive",
        "inner.steps must be positive",
        "outer.optimizer must be one of",
        "rounds.min_accepted (5) can't exceed",
    ):
        assert expected in problems, expected


def test_booleans_are_not_integers_and_missing_required_fields_are_named() -> None:
    with pytest.raises(SpecError) as caught:
        CampaignSpec.from_dict({"name": "x", "inner": {"steps": True}})
    problems = "\n".join(caught.value.problems)
    assert "dataset: required" in problems
    assert "inner.steps: expected an integer" in problems


def test_sequence_longer_than_the_preset_context_is_refused() -> None:
    with pytest.raises(SpecError, match="exceeds the tiny preset's context"):
        CampaignSpec.from_dict({"name": "x", "dataset": "d", "inner": {"seq_len": 4096}})


def test_invalid_toml_is_refused_with_the_parser_message() -> None:
    with pytest.raises(SpecError, match="not valid TOML"):
        CampaignSpec.from_toml("name = ")


@pytest.mark.parametrize("plan, ok", [("full", True), ("groups:2", True), ("groups:0", False), ("halves", False)])
def test_shard_plan_is_full_or_groups(plan: str, ok: bool) -> None:
    data = {"name": "x", "dataset": "d", "shard_plan": plan}
    if ok:
        assert CampaignSpec.from_dict(data).shard_plan == plan
    else:
        with pytest.raises(SpecError, match="shard_plan"):
            CampaignSpec.from_dict(data)


def test_a_name_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(SpecError, match="name must be"):
        CampaignSpec.from_dict({"name": "demo\n", "dataset": "d"})


NAMED = 'name = "x"\ndataset = "d"\n'


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a = " + "[" * 100_000, "nested deeper"),
        ("seed = " + "1" * 5000, "thousands of digits"),
        (
            NAMED + "seed = " + "1" * 4000,
            "seed must be within [0, 9223372036854775807], got (an integer of about 4000 digits)",
        ),
        (
            NAMED + "description = " + "[" * 300 + "]" * 300,
            "description: expected a string, got list [[[...]]]",
        ),
        ('name = "' + "n" * 5000 + '"\ndataset = "d"', "name must be 1-64 letters"),
    ],
    ids=["deep", "5000-digits", "4000-digits", "deep-value", "long-name"],
)
def test_a_hostile_spec_is_a_spec_error_quoting_only_a_little_of_it(text: str, problem: str) -> None:
    with pytest.raises(SpecError) as caught:
        CampaignSpec.from_toml(text)
    assert problem in str(caught.value)
    assert len(str(caught.value)) < 300
