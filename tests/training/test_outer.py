from __future__ import annotations

import itertools

import pytest
import torch

from training.accumulator import DeltaAccumulator, staleness_weight
from training.error_feedback import ErrorFeedback
from training.outer import AdamOuter, AveragingOuter, NesterovOuter, make_outer_optimizer


def test_averaging_at_lr_one_lands_on_the_workers_end_point() -> None:
    start = torch.randn(50)
    end = start - 0.01 * torch.randn(50)
    params = {"w": start.clone()}
    AveragingOuter(1.0).step(params, {"w": start - end})
    assert torch.allclose(params["w"], end, atol=1e-7)


def test_nesterov_matches_torch_sgd_with_nesterov_momentum() -> None:
    torch.manual_seed(0)
    ours = {"w": torch.randn(20)}
    reference = torch.nn.Parameter(ours["w"].clone())
    sgd = torch.optim.SGD([reference], lr=0.7, momentum=0.9, nesterov=True)
    outer = NesterovOuter(lr=0.7, momentum=0.9)
    for _ in range(5):
        delta = torch.randn(20) * 0.1
        outer.step(ours, {"w": delta})
        reference.grad = delta.clone()
        sgd.step()
    torch.testing.assert_close(ours["w"], reference.detach())


def test_adam_outer_matches_torch_adam() -> None:
    torch.manual_seed(1)
    ours = {"w": torch.randn(20)}
    reference = torch.nn.Parameter(ours["w"].clone())
    adam = torch.optim.Adam([reference], lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    outer = AdamOuter(lr=3e-3, beta1=0.9, beta2=0.95)
    for _ in range(5):
        delta = torch.randn(20) * 0.1
        outer.step(ours, {"w": delta})
        reference.grad = delta.clone()
        adam.step()
    torch.testing.assert_close(ours["w"], reference.detach())


@pytest.mark.parametrize("name", ["nesterov", "average", "adam"])
def test_state_round_trips_so_a_restarted_coordinator_continues_identically(name: str) -> None:
    torch.manual_seed(2)
    deltas = [{"w": torch.randn(8)} for _ in range(4)]
    straight, resumed = make_outer_optimizer(name), make_outer_optimizer(name)
    a, b = {"w": torch.zeros(8)}, {"w": torch.zeros(8)}
    for d in deltas[:2]:
        straight.step(a, d)
        resumed.step(b, d)
    restarted = make_outer_optimizer(name)
    restarted.load_state_dict(resumed.state_dict())
    for d in deltas[2:]:
        straight.step(a, d)
        restarted.step(b, d)
    assert torch.equal(a["w"], b["w"])


def test_parameters_without_an_update_are_left_alone() -> None:
    params = {"a": torch.ones(3), "b": torch.ones(3)}
    make_outer_optimizer("nesterov").step(params, {"a": torch.ones(3)})
    assert torch.equal(params["b"], torch.ones(3))
    assert not torch.equal(params["a"], torch.ones(3))


def test_unknown_outer_optimizer_and_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="nesterov, average, adam"):
        make_outer_optimizer("lion")
    with pytest.raises(ValueError, match="learning rate"):
        make_outer_optimizer("average", lr=0)
    with pytest.raises(ValueError, match="momentum"):
        make_outer_optimizer("nesterov", momentum=1.0)


def test_accumulator_gives_the_token_weighted_mean() -> None:
    acc = DeltaAccumulator({"w": (2,)})
    acc.add({"w": torch.tensor([1.0, 0.0])}, weight=100)
    acc.add({"w": torch.tensor([0.0, 4.0])}, weight=300)
    torch.testing.assert_close(acc.mean()["w"], torch.tensor([0.25, 3.0]))
    assert acc.contributions == 2


def test_accumulator_averages_each_tensor_over_the_updates_that_carried_it() -> None:
    acc = DeltaAccumulator({"a": (1,), "b": (1,), "c": (1,)})
    acc.add({"a": torch.tensor([2.0]), "b": torch.tensor([4.0])}, weight=1)
    acc.add({"a": torch.tensor([4.0])}, weight=1)
    mean = acc.mean()
    assert mean["a"].item() == 3.0 and mean["b"].item() == 4.0
    assert "c" not in mean


def test_accumulator_memory_does_not_grow_with_contributions() -> None:
    acc = DeltaAccumulator({"w": (1000,)})
    before = [t.data_ptr() for t in acc.sums.values()]
    for _ in range(50):
        acc.add({"w": torch.randn(1000)}, weight=1.0)
    assert [t.data_ptr() for t in acc.sums.values()] == before
    assert sum(t.numel() for t in acc.sums.values()) == 1000


def test_accumulator_rejects_a_bad_update_without_adding_any_part_of_it() -> None:
    acc = DeltaAccumulator({"a": (2,), "b": (2,)})
    with pytest.raises(ValueError, match="shape"):
        acc.add({"a": torch.ones(2), "b": torch.ones(3)}, weight=1)
    with pytest.raises(ValueError, match="does not have"):
        acc.add({"z": torch.ones(2)}, weight=1)
    with pytest.raises(ValueError, match="weight"):
        acc.add({"a": torch.ones(2)}, weight=float("nan"))
    assert acc.contributions == 0 and acc.mean() == {}


def test_staleness_weight_decays_then_cuts_off_at_the_bound() -> None:
    assert staleness_weight(0, bound=4) == 1.0
    weights = [staleness_weight(s, bound=4) for s in range(5)]
    assert all(a > b > 0 for a, b in itertools.pairwise(weights))
    assert staleness_weight(5, bound=4) == 0.0
    with pytest.raises(ValueError):
        staleness_weight(-1, bound=4)


def test_error_feedback_carries_what_the_codec_dropped_into_the_next_update() -> None:
    feedback = ErrorFeedback()
    first = {"w": torch.tensor([1.0, 0.2])}
    sent = feedback.compensate(first)
    decoded = {"w": torch.tensor([1.0, 0.0])}  # a codec that dropped the small entry
    feedback.remember(sent, decoded)
    second = feedback.compensate({"w": torch.tensor([0.0, 0.2])})
    torch.testing.assert_close(second["w"], torch.tensor([0.0, 0.4]))
    # Over many rounds nothing is lost: the total decoded converges to the total sent.
    feedback.reset()
    total_in, total_out = torch.zeros(2), torch.zeros(2)
    for _ in range(20):
        update = {"w": torch.tensor([1.0, 0.2])}
        sent = feedback.compensate(update)
        decoded = {"w": torch.where(sent["w"].abs() >= 0.5, sent["w"], torch.zeros(2))}
        feedback.remember(sent, decoded)
        total_in += update["w"]
        total_out += decoded["w"]
    assert (total_in - total_out).abs().max() < 0.5
