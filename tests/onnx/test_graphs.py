"""The ONNX graphs of training/onnx_graphs.py, run with ONNX Runtime against the training core.

Graphs are exported once per module (about a minute each on two cores) for a model small enough to
export quickly but with every part of the real one: two blocks, RoPE, RMSNorm, SwiGLU, tied embeddings.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from coordinator.validation.replication import compare_replicas
from protocol.codecs import CodecConfig, TensorSpec, decode, encode
from protocol.errors import ErrorCode
from training.checkpoint import load_state, save_state
from training.inner import InnerConfig, InnerLoop, InnerResult
from training.model import ModelConfig, build_model
from training.moments import Moments, factor, loop_moments, seed_loop
from training.onnx_graphs import (
    GRAPH_OPSET,
    MAX_DELTA_ERROR,
    MAX_LOSS_ERROR,
    GraphError,
    OrtInnerLoop,
    build_loss_graph,
    build_step_graph,
    check_loss_graph,
    check_served_graph,
    check_step_graph,
    ort_session,
    step_graph_names,
)

CONFIG = ModelConfig(vocab_size=256, d_model=32, n_layer=2, n_head=2, d_ff=64, max_seq_len=64)
NAMES = [n for n, _ in build_model(CONFIG).named_parameters()]
SHARD = [n for n in NAMES if n.startswith(("blocks.1.", "norm."))]


@pytest.fixture(scope="module")
def step_graph() -> bytes:
    return build_step_graph(CONFIG)  # checked against torch as it is built


@pytest.fixture(scope="module")
def shard_graph() -> bytes:
    return build_step_graph(CONFIG, trainable=SHARD)


def _relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    num = math.sqrt(sum(float((a[n] - b[n]).double().norm()) ** 2 for n in b))
    return num / math.sqrt(sum(float(b[n].double().norm()) ** 2 for n in b))


def _both(
    graph: bytes, inner: InnerConfig, *, trainable: list[str], global_step: int, moments: Moments | None = None
) -> tuple[InnerResult, InnerResult]:
    ort, ref = _loops(graph, inner, trainable=trainable, global_step=global_step, moments=moments)
    # A random phrase repeated: text a few steps of training visibly learn.
    phrase = torch.randint(0, CONFIG.vocab_size, (29,), generator=torch.Generator().manual_seed(7))
    tokens = phrase.repeat(inner.tokens_needed // 29 + 1)[: inner.tokens_needed]
    return ort.run(tokens), ref.run(tokens)


def _loops(
    graph: bytes, inner: InnerConfig, *, trainable: list[str], global_step: int, moments: Moments | None = None
) -> tuple[OrtInnerLoop, InnerLoop]:
    model = build_model(CONFIG, seed=3)
    params = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    ort = OrtInnerLoop(graph, inner, params, trainable=trainable, global_step=global_step)
    ref = InnerLoop(model, inner, global_step=global_step, trainable=trainable)
    if moments is not None:
        seed_loop(ort, moments)
        seed_loop(ref, moments)
    return ort, ref


def test_a_unit_seeded_with_shared_moments_trains_alike_in_both_runtimes_and_returns_alike_moments(
    shard_graph: bytes,
) -> None:
    inner = InnerConfig(steps=4, batch_size=2, seq_len=16, lr=1e-2, shared_moments=True)
    model = build_model(CONFIG, seed=3)
    # A second moment of gradient scale, not rank one, for every parameter (the shard takes its own).
    generator = torch.Generator().manual_seed(5)
    shared = {n: factor(torch.rand(p.shape, generator=generator) * 1e-4) for n, p in model.named_parameters()}
    ort_loop, ref_loop = _loops(shard_graph, inner, trainable=SHARD, global_step=0, moments=shared)
    phrase = torch.randint(0, CONFIG.vocab_size, (29,), generator=torch.Generator().manual_seed(7))
    tokens = phrase.repeat(inner.tokens_needed // 29 + 1)[: inner.tokens_needed]
    ort, ref = ort_loop.run(tokens), ref_loop.run(tokens)
    assert _relative(ort.delta, ref.delta) < MAX_DELTA_ERROR
    fresh_ort, _ = _both(shard_graph, inner, trainable=SHARD, global_step=0)
    assert _relative(fresh_ort.delta, ort.delta) > 10 * MAX_DELTA_ERROR  # the seed changed the unit
    mine, theirs = loop_moments(ort_loop), loop_moments(ref_loop)
    assert sorted(mine) == sorted(theirs) == sorted(SHARD)
    for name in SHARD:
        for a, b in zip(mine[name], theirs[name], strict=True):
            assert torch.allclose(a, b, rtol=1e-3, atol=1e-12), name


def test_the_step_graph_is_standard_onnx_with_the_documented_inputs_and_outputs(step_graph: bytes) -> None:
    model = onnx.load_from_string(step_graph)
    onnx.checker.check_model(model)
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [GRAPH_OPSET]
    inputs, outputs = step_graph_names(NAMES, NAMES)
    assert [i.name for i in model.graph.input] == inputs
    assert [o.name for o in model.graph.output] == outputs
    # Weights are inputs, not part of the graph: only the rotary table is a constant.
    assert sum(t.size for t in (numpy_helper.to_array(i) for i in model.graph.initializer)) < 4 * 64 * 16


def test_onnx_runtime_trains_as_the_training_core_does(step_graph: bytes) -> None:
    """Warmup then cosine decay, gradient accumulation, clipping that bites and weight decay: every
    step's loss and the pseudo-gradient match InnerLoop's."""
    inner = InnerConfig(
        steps=5, batch_size=2, seq_len=32, grad_accum=2, lr=1e-2, warmup_steps=3, total_steps=20, grad_clip=0.5
    )
    ort, ref = _both(step_graph, inner, trainable=NAMES, global_step=1)
    assert ort.tokens == ref.tokens and len(ort.losses) == 5
    assert max(abs(a - b) / b for a, b in zip(ort.losses, ref.losses, strict=True)) < MAX_LOSS_ERROR
    assert ort.losses[-1] < ort.losses[0], "it trains"
    assert _relative(ort.delta, ref.delta) < MAX_DELTA_ERROR
    # Not trivially: the update is far from zero and from its sign flip.
    assert _relative({n: -t for n, t in ort.delta.items()}, ref.delta) > 1.9


def test_a_shard_graph_trains_only_its_parameters_and_takes_the_rest_as_frozen_inputs(shard_graph: bytes) -> None:
    inputs, _ = step_graph_names(NAMES, SHARD)
    session = ort_session(shard_graph)
    assert [i.name for i in session.get_inputs()] == inputs
    assert sum(name.startswith("frozen.") for name in inputs) == len(NAMES) - len(SHARD)
    inner = InnerConfig(steps=3, batch_size=2, seq_len=16, lr=3e-3)
    ort, ref = _both(shard_graph, inner, trainable=SHARD, global_step=0)
    assert sorted(ort.delta) == sorted(SHARD)
    assert _relative(ort.delta, ref.delta) < MAX_DELTA_ERROR


def test_a_step_graph_is_refused_for_weights_of_another_shard(shard_graph: bytes) -> None:
    params = {n: p.detach().numpy() for n, p in build_model(CONFIG).named_parameters()}
    with pytest.raises(ValueError, match="another model or shard"):
        OrtInnerLoop(shard_graph, InnerConfig(steps=1, batch_size=1, seq_len=8), params, trainable=NAMES, global_step=0)


def test_a_graph_that_computes_something_else_fails_the_check(step_graph: bytes) -> None:
    """The check is what stands between an exporter's mistake and volunteers' wasted work: a graph
    whose rotary table is off by 1 % compiles and runs, and is caught."""
    assert check_step_graph(step_graph, CONFIG).passed
    model = onnx.load_from_string(step_graph)
    (table,) = model.graph.initializer
    table.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(table) * np.float32(1.01), table.name))
    check = check_step_graph(model.SerializeToString(), CONFIG)
    assert not check.passed and check.delta_error > MAX_DELTA_ERROR, check


def test_the_loss_graph_gives_the_models_loss_for_any_weights() -> None:
    graph = build_loss_graph(CONFIG)
    for seed in (0, 1):
        check = check_loss_graph(graph, CONFIG, seed=seed)
        assert check.passed, check
    session = ort_session(graph)
    model = build_model(CONFIG, seed=5)
    ids = torch.randint(0, CONFIG.vocab_size, (4, 48))
    targets = torch.roll(ids, -1, dims=1)
    feed = {f"param.{n}": p.detach().numpy() for n, p in model.named_parameters()}
    (loss,) = session.run(None, feed | {"input_ids": ids.numpy(), "targets": targets.numpy()})
    with torch.no_grad():
        assert abs(float(loss) - float(model.loss(ids, targets))) < 1e-5


def test_an_onnx_unit_stopped_midway_resumes_from_its_saved_state_to_the_same_update(step_graph: bytes) -> None:
    """What the volunteer saves when paused or shut down (safetensors via training.checkpoint) brings a
    fresh loop to the update of a run that never stopped."""
    inner = InnerConfig(steps=4, batch_size=2, seq_len=16, lr=3e-3, warmup_steps=1)
    params = {n: p.detach().numpy().copy() for n, p in build_model(CONFIG, seed=2).named_parameters()}
    tokens = torch.randint(0, CONFIG.vocab_size, (inner.tokens_needed,), generator=torch.Generator().manual_seed(1))
    whole = OrtInnerLoop(step_graph, inner, params, trainable=NAMES, global_step=0).run(tokens)

    first = OrtInnerLoop(step_graph, inner, params, trainable=NAMES, global_step=0)
    stopped = first.run(tokens, should_stop=lambda: first.step >= 2)
    assert not stopped.finished and first.step == 2
    saved = save_state(first.state_dict())
    second = OrtInnerLoop(step_graph, inner, params, trainable=NAMES, global_step=0)
    second.load_state_dict(load_state(saved))
    resumed = second.run(tokens)
    assert resumed.finished and resumed.losses == whole.losses
    assert all(torch.equal(resumed.delta[n], whole.delta[n]) for n in NAMES)
    # A torch loop's checkpoint is not mistaken for one of these.
    torch_state = InnerLoop(build_model(CONFIG), inner, global_step=0).state_dict()
    with pytest.raises(ValueError, match="another runtime"):
        OrtInnerLoop(step_graph, inner, params, trainable=NAMES, global_step=0).load_state_dict(torch_state)


def test_replicas_trained_with_onnx_runtime_and_with_torch_agree_and_a_sign_flip_does_not(step_graph: bytes) -> None:
    """The coordinator's replica comparison, on one unit trained by each runtime and sent through the
    int8 codec as volunteers send it: the runtimes' difference is far inside its tolerance, a
    sign-flipped update far outside."""
    inner = InnerConfig(steps=4, batch_size=2, seq_len=32, grad_accum=2, lr=1e-2, warmup_steps=2, total_steps=40)
    ort, ref = _both(step_graph, inner, trainable=NAMES, global_step=0)
    codec = CodecConfig("int8")
    specs = {n: TensorSpec(tuple(ref.delta[n].shape)) for n in NAMES}

    def wire(delta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return decode(encode(delta, codec), specs, config=codec)

    agreed = compare_replicas(wire(ort.delta), wire(ref.delta))
    assert agreed.accepted, agreed.message
    flipped = compare_replicas(wire({n: -t for n, t in ort.delta.items()}), wire(ref.delta))
    assert not flipped.accepted and flipped.code is ErrorCode.REPLICATION_MISMATCH


def test_a_volunteer_refuses_a_served_graph_with_foreign_operators_external_files_or_no_model(
    step_graph: bytes,
) -> None:
    """The graph comes from the network: before ONNX Runtime opens it, it must be plain ai.onnx with
    every tensor inside it (an external-data initializer makes ONNX Runtime read a file it names)."""
    check_served_graph(step_graph)
    foreign = onnx.load_from_string(step_graph)
    foreign.graph.node[0].domain = "com.example.evil"
    with pytest.raises(GraphError, match=r"outside ai\.onnx"):
        check_served_graph(foreign.SerializeToString())
    external = onnx.load_from_string(step_graph)
    (table,) = external.graph.initializer
    table.ClearField("raw_data")
    table.data_location = onnx.TensorProto.EXTERNAL
    table.external_data.add(key="location", value="/etc/passwd")
    with pytest.raises(GraphError, match="external files"):
        check_served_graph(external.SerializeToString())
    with pytest.raises(GraphError, match="not a readable ONNX model"):
        check_served_graph(b"\x00not a model" * 10)
    with pytest.raises(GraphError, match="at most"):
        check_served_graph(step_graph, max_bytes=1000)
