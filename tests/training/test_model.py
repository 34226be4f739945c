from __future__ import annotations

import pytest
import torch

from training.model import PRESETS, build_model, count_parameters, parameter_groups, preset


def test_same_seed_builds_identical_weights_and_another_seed_does_not() -> None:
    config = preset("tiny", vocab_size=300)
    a, b, c = build_model(config, seed=7), build_model(config, seed=7), build_model(config, seed=8)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb), name
        if not name.endswith("norm.weight"):
            assert not torch.equal(pa, pc), name


def test_forward_gives_logits_over_the_vocabulary() -> None:
    model = build_model(preset("tiny", vocab_size=300, max_seq_len=32), seed=0)
    logits = model(torch.randint(0, 300, (2, 32)))
    assert logits.shape == (2, 32, 300)
    assert torch.isfinite(logits).all()


def test_initial_loss_is_near_uniform_over_the_vocabulary() -> None:
    model = build_model(preset("tiny", vocab_size=512, max_seq_len=64), seed=0)
    ids = torch.randint(0, 512, (4, 65))
    loss = model.loss(ids[:, :-1], ids[:, 1:]).item()
    assert abs(loss - torch.log(torch.tensor(512.0)).item()) < 0.3


def test_attention_is_causal() -> None:
    model = build_model(preset("tiny", vocab_size=300, max_seq_len=16), seed=0)
    ids = torch.randint(0, 300, (1, 16))
    changed = ids.clone()
    changed[0, 10] = (changed[0, 10] + 1) % 300
    before, after = model(ids), model(changed)
    assert torch.allclose(before[0, :10], after[0, :10], atol=1e-6)
    assert not torch.allclose(before[0, 10:], after[0, 10:])


def test_embeddings_are_tied_to_the_output_layer() -> None:
    model = build_model(preset("tiny", vocab_size=300), seed=0)
    names = [name for name, _ in model.named_parameters()]
    assert names.count("embed.weight") == 1
    assert not any("head" in name or "lm_" in name for name in names)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_instantiates_on_the_meta_device(name: str) -> None:
    model = build_model(preset(name), device="meta")
    assert next(model.parameters()).device.type == "meta"
    assert count_parameters(model) > 0


def test_preset_sizes_span_one_million_to_a_billion_parameters() -> None:
    sizes = {name: count_parameters(build_model(preset(name), device="meta")) for name in PRESETS}
    assert 0.8e6 < sizes["tiny"] < 1.5e6
    assert 8e6 < sizes["small"] < 12e6
    assert sizes["1b"] >= 1e9
    assert sorted(sizes.values()) == list(sizes.values())


def test_parameter_groups_cover_every_parameter_once_in_model_order() -> None:
    model = build_model(preset("tiny", vocab_size=300), seed=0)
    groups = parameter_groups(model)
    assert list(groups) == ["embed", "block.0", "block.1", "block.2", "norm"]
    flat = [name for names in groups.values() for name in names]
    assert flat == [name for name, _ in model.named_parameters()]


def test_invalid_config_lists_every_problem() -> None:
    with pytest.raises(ValueError, match=r"d_model .* divisible .*") as caught:
        preset("tiny").__class__(vocab_size=0, d_model=10, n_layer=1, n_head=3, d_ff=4, max_seq_len=8)
    assert "vocab_size must be positive" in str(caught.value)


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(ValueError, match="tiny, small"):
        preset("huge")
