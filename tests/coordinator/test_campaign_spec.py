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


def test_aggregation_is_the_mean_unless_a_robust_rule_is_asked_for() -> None:
    outer = CampaignSpec.from_toml(GOOD).outer
    assert (outer.aggregation, outer.trim, outer.clip_iterations, outer.clip_tau) == ("mean", 0.2, 3, None)
    assert not outer.aggregation_rule.robust
    robust = GOOD.replace(
        "lr = 0.7\n", 'lr = 0.7\naggregation = "centered_clip"\nclip_iterations = 5\nclip_tau = 0.25\n'
    )
    spec = CampaignSpec.from_toml(robust.replace("min_accepted = 2", "min_accepted = 3"))
    rule = spec.outer.aggregation_rule
    assert (rule.name, rule.clip_iterations, rule.clip_tau) == ("centered_clip", 5, 0.25)
    assert CampaignSpec.from_dict(spec.to_dict()) == spec
    assert "clip_tau" not in CampaignSpec.from_toml(GOOD).to_dict()["outer"]  # TOML has no null: omitted


@pytest.mark.parametrize(
    ("outer", "problem"),
    [
        ({"aggregation": "median"}, "outer.aggregation must be one of mean, trimmed_mean, centered_clip, got 'median'"),
        ({"aggregation": "trimmed_mean", "trim": 0.5}, "outer.trim must be within [0, 0.5), got 0.5"),
        ({"trim": -0.1}, "outer.trim must be within [0, 0.5), got -0.1"),
        ({"clip_iterations": 0}, "outer.clip_iterations must be positive, got 0"),
        ({"clip_iterations": 11}, "outer.clip_iterations must be within [1, 10], got 11"),
        ({"clip_tau": 0}, "outer.clip_tau must be positive, got 0.0"),
        ({"clip_tau": 1e7}, "outer.clip_tau must be within (0, 1000000.0], got 10000000.0"),
    ],
)
def test_aggregation_settings_out_of_bounds_are_refused_by_name(outer: dict[str, object], problem: str) -> None:
    rounds = {"units_per_round": 10, "min_accepted": 10}
    with pytest.raises(SpecError) as caught:
        CampaignSpec.from_dict({"name": "x", "dataset": "d", "outer": outer, "rounds": rounds})
    assert caught.value.problems == [problem]


@pytest.mark.parametrize(
    ("outer", "rounds", "shard_plan", "problem"),
    [
        (
            {"aggregation": "trimmed_mean", "trim": 0.2},
            3,
            "full",
            "outer.trim (0.2) cuts nothing from a round of rounds.min_accepted (3) updates: floor(trim × 3) is 0, "
            "so trimmed_mean would be the plain mean; raise outer.trim to at least 0.334 or rounds.min_accepted "
            "to at least 5",
        ),
        (
            {"aggregation": "trimmed_mean", "trim": 0.34},
            4,
            "groups:2",
            "outer.trim (0.34) cuts nothing from a round of rounds.min_accepted (4) updates over 2 shards (2 per "
            "shard): floor(trim × 2) is 0, so trimmed_mean would be the plain mean; raise rounds.min_accepted to "
            "at least 6",
        ),
        (
            {"aggregation": "centered_clip"},
            2,
            "full",
            "outer.aggregation centered_clip needs at least 3 updates per shard to outvote one, but a round of "
            "rounds.min_accepted (2) updates gives 2: raise rounds.min_accepted to at least 3",
        ),
    ],
)
def test_a_robust_rule_that_quorum_rounds_would_make_the_mean_is_refused(
    outer: dict[str, object], rounds: int, shard_plan: str, problem: str
) -> None:
    data = {
        "name": "x",
        "dataset": "d",
        "shard_plan": shard_plan,
        "outer": outer,
        "rounds": {"units_per_round": 10, "min_accepted": rounds},
    }
    with pytest.raises(SpecError) as caught:
        CampaignSpec.from_dict(data)
    assert caught.value.problems == [problem]
    # Enough updates per shard, and the same rule is fine.
    data["rounds"] = {"units_per_round": 10, "min_accepted": 6 if shard_plan == "full" else 10}
    assert CampaignSpec.from_dict(data).outer.aggregation == outer["aggregation"]


def test_a_download_codec_that_clients_could_not_rebuild_bit_for_bit_is_refused() -> None:
    def with_download(codec: str) -> str:
        return GOOD.replace("\ncodec = ", f'\ndownload_codec = "{codec}"\ncodec = ', 1)

    assert CampaignSpec.from_toml(with_download("sign1")).download_codec.name == "sign1"
    with pytest.raises(SpecError) as caught:
        CampaignSpec.from_toml(with_download("dct"))
    assert any(p.startswith("download_codec: dct can't be a delta codec") for p in caught.value.problems)
