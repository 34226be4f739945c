"""ONNX graphs of a campaign's model, parameters as graph inputs: one whole inner step, and the loss.

The step graph is forward, backward, gradient clipping and AdamW in one graph of standard `ai.onnx`
(opset 18) operators, so any plain inference build of ONNX Runtime trains with it — wasm and WebGPU
in a browser, DirectML or CoreML on desktops PyTorch can't use. It depends on the model config and
the shard, not on weights or a version: a coordinator builds it once per campaign and shard.

    >>> graph = build_step_graph(config, trainable=names)    # ONNX bytes, checked against torch
    >>> loop = OrtInnerLoop(graph, inner, params, trainable=names, global_step=0)
    >>> result = loop.run(tokens)                            # an InnerResult, as InnerLoop gives

Step graph inputs, in order: `param.<name>` for each trainable parameter, `frozen.<name>` for each
other one, `m.<name>` and `v.<name>` (AdamW's moments) for each trainable one, `input_ids` and
`targets` (int64, batch × seq: the step's micro-batches stacked), and `hyper` (float32[7]: step
(1-based), lr, beta1, beta2, eps, weight_decay, grad_clip — hyperparameters are inputs, so one graph
serves every recipe, and no constant can be folded away). Outputs: `loss` (mean over all targets),
`grad_norm` (before clipping), then `new_param.<name>`, `new_m.<name>`, `new_v.<name>` for each
trainable parameter. The loss graph takes `param.<name>` for every parameter, `input_ids` and
`targets`, and gives `loss`.

How it is built: the step is traced with `make_fx` (functionalized, core ATen decompositions,
symbolic batch and sequence sizes, attention on PyTorch's math kernel — the fused one's backward
has no ONNX form), then exported with the dynamo exporter and *no* graph optimization (the optimizer
drops additions of constants ≤ 1e-8). Exporters can compile a graph that computes something else
(seen: `aot_export_joint_simple` gave gradients 1024× too large), so every graph built here is run
with ONNX Runtime against the training core's `InnerLoop` before it is returned (`check_step_graph`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from training.inner import InnerConfig, InnerLoop, InnerResult, StepReport, unit_batches, unit_learning_rate
from training.model import GPT, ModelConfig, build_model

__all__ = [
    "GRAPH_OPSET",
    "HYPER_FIELDS",
    "GraphCheck",
    "GraphError",
    "OrtInnerLoop",
    "build_loss_graph",
    "build_step_graph",
    "check_loss_graph",
    "check_served_graph",
    "check_step_graph",
    "ort_session",
    "step_graph_names",
]

GRAPH_OPSET = 18
HYPER_FIELDS = ("step", "lr", "beta1", "beta2", "eps", "weight_decay", "grad_clip")
# How far ONNX Runtime may land from torch before a graph is refused: the relative L2 distance of
# the pseudo-gradient after CHECK_STEPS steps, and of each step's loss. Measured on `tiny`: ~2e-5 and
# ~1e-7 (the level of torch's own math-vs-fused attention difference).
MAX_DELTA_ERROR = 1e-3
MAX_GRAPH_BYTES = 1 << 30  # a served graph holds no weights: a few MB for the presets trained on CPUs
MAX_LOSS_ERROR = 1e-4
CHECK_STEPS = 3

log = logging.getLogger(__name__)


class GraphError(Exception):
    """A graph that can't be built, uses operators outside `ai.onnx`, or computes something else."""


@dataclass(frozen=True)
class GraphCheck:
    """How a graph's numbers compare with torch's on the same inputs."""

    loss_error: float  # largest relative difference of a step's loss
    delta_error: float  # relative L2 distance of the pseudo-gradient after `steps` steps (0 for a loss graph)
    steps: int
    seconds: float  # of the check itself

    @property
    def passed(self) -> bool:
        return self.loss_error <= MAX_LOSS_ERROR and self.delta_error <= MAX_DELTA_ERROR


def step_graph_names(names: Sequence[str], trainable: Sequence[str]) -> tuple[list[str], list[str]]:
    """The step graph's input and output names for a model with parameters `names`."""
    chosen = set(trainable)
    frozen = [n for n in names if n not in chosen]
    inputs = [
        *(f"param.{n}" for n in trainable),
        *(f"frozen.{n}" for n in frozen),
        *(f"m.{n}" for n in trainable),
        *(f"v.{n}" for n in trainable),
        "input_ids",
        "targets",
        "hyper",
    ]
    outputs = [
        "loss",
        "grad_norm",
        *(f"new_param.{n}" for n in trainable),
        *(f"new_m.{n}" for n in trainable),
        *(f"new_v.{n}" for n in trainable),
    ]
    return inputs, outputs


class _Loss(torch.nn.Module):
    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.model.loss(ids, targets)


def _functional_loss(model: GPT) -> Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]:
    """GPT.loss with the weights passed in by parameter name (the rotary table stays the model's)."""
    wrapper = _Loss(model)
    buffers = {f"model.{n}": b for n, b in model.named_buffers()}

    def loss(weights: dict[str, torch.Tensor], ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        named = {f"model.{n}": p for n, p in weights.items()}
        value: torch.Tensor = torch.func.functional_call(wrapper, named | buffers, (ids, targets))
        return value

    return loss


def _step_function(model: GPT, trainable: Sequence[str], frozen: Sequence[str]) -> Callable[..., tuple[Any, ...]]:
    """θ, m, v and a batch → loss, ‖g‖, θ', m', v' — InnerLoop's step: clip_grad_norm_ then AdamW."""
    model_loss = _functional_loss(model)

    def step(
        params: list[torch.Tensor],
        fixed: list[torch.Tensor],
        m: list[torch.Tensor],
        v: list[torch.Tensor],
        ids: torch.Tensor,
        targets: torch.Tensor,
        hyper: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        count, lr, beta1, beta2, eps, decay, clip = (hyper[i] for i in range(len(HYPER_FIELDS)))

        def loss_of(ps: list[torch.Tensor]) -> torch.Tensor:
            weights = dict(zip(trainable, ps, strict=True)) | dict(zip(frozen, fixed, strict=True))
            return model_loss(weights, ids, targets)

        grads, loss = torch.func.grad_and_value(loss_of)(list(params))
        norm = torch.stack([(g * g).sum() for g in grads]).sum().sqrt()
        # torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6), never up; grad_clip 0: off.
        scale = torch.where(clip > 0, torch.clamp(clip / (norm + 1e-6), max=1.0), torch.ones_like(norm))
        correction1 = 1 - beta1**count
        correction2 = 1 - beta2**count
        new_p, new_m, new_v = [], [], []
        for p, g, m1, v1 in zip(params, grads, m, v, strict=True):
            g = g * scale
            # torch.optim.AdamW (single-tensor): decoupled decay, then the bias-corrected step.
            p = p * (1 - lr * decay)
            m1 = m1 + (g - m1) * (1 - beta1)
            v1 = v1 * beta2 + (1 - beta2) * g * g
            denominator = torch.sqrt(v1) / torch.sqrt(correction2) + eps
            new_p.append(p - (lr / correction1) * m1 / denominator)
            new_m.append(m1)
            new_v.append(v1)
        return loss, norm, new_p, new_m, new_v

    return step


def _drop_empty_fills(graph: torch.fx.GraphModule) -> None:
    """`full_like(empty_permuted(shape), x)` → `full(shape, x)`: the exporter has no `empty_permuted`."""
    aten = torch.ops.aten
    for node in list(graph.graph.nodes):
        if node.target is not aten.empty_permuted.default:
            continue
        for user in list(node.users):
            if user.target is not aten.full_like.default:
                raise GraphError(f"unexpected use of an empty tensor in the traced step: {user.format_node()}")
            with graph.graph.inserting_before(user):
                full = graph.graph.call_function(
                    aten.full.default, (node.args[0], user.args[1]), {"dtype": node.kwargs.get("dtype")}
                )
            user.replace_all_uses_with(full)
            graph.graph.erase_node(user)
        graph.graph.erase_node(node)
    graph.recompile()


class _Flat(torch.nn.Module):
    """The traced step with flat tensor lists, as the exporter wants them."""

    def __init__(self, traced: torch.fx.GraphModule) -> None:
        super().__init__()
        self.traced = traced

    def forward(
        self,
        params: list[torch.Tensor],
        fixed: list[torch.Tensor],
        m: list[torch.Tensor],
        v: list[torch.Tensor],
        ids: torch.Tensor,
        targets: torch.Tensor,
        hyper: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        loss, norm, new_p, new_m, new_v = self.traced(params, fixed, m, v, ids, targets, hyper)
        return (loss, norm, *new_p, *new_m, *new_v)


def _export(
    module: torch.nn.Module, args: tuple[Any, ...], dynamic: tuple[Any, ...], inputs: list[str], outputs: list[str]
) -> bytes:
    program = torch.onnx.export(
        module,
        args,
        dynamo=True,
        optimize=False,  # the optimizer folds away additions of constants ≤ 1e-8
        opset_version=GRAPH_OPSET,
        dynamic_shapes=dynamic,
        input_names=inputs,
        output_names=outputs,
        verbose=False,
    )
    if program is None:
        raise GraphError("the exporter returned no program")
    data: bytes = program.model_proto.SerializeToString()
    _check_domains(data)
    return data


def _check_domains(data: bytes) -> None:
    import onnx

    model = onnx.load_from_string(data)
    domains = {node.domain or "ai.onnx" for node in model.graph.node} | {f.domain for f in model.functions if f.domain}
    foreign = sorted(d for d in domains if d not in ("ai.onnx", ""))
    if foreign or model.functions:
        raise GraphError(f"the graph uses operators outside ai.onnx: {', '.join(foreign) or 'local functions'}")
    # Tensors stored outside the model make ONNX Runtime read files named by the graph.
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    external += [
        a.t.name
        for node in model.graph.node
        for a in node.attribute
        if a.HasField("t") and a.t.data_location == onnx.TensorProto.EXTERNAL
    ]
    if external:
        raise GraphError(f"the graph keeps tensors in external files: {', '.join(external[:3])}")


def check_served_graph(data: bytes, max_bytes: int = MAX_GRAPH_BYTES) -> None:
    """Refuse a step graph received from a coordinator unless it is a plain ONNX model of `ai.onnx`
    operators with every tensor inside it (GraphError). The graph's inputs and outputs are checked
    against the unit's shard when `OrtInnerLoop` opens it."""
    if len(data) > max_bytes:
        raise GraphError(f"the graph is {len(data)} bytes; at most {max_bytes} are taken")
    try:
        _check_domains(data)
    except GraphError:
        raise
    except Exception as error:  # onnx's parser raises its own kinds for bytes that are no model
        raise GraphError(f"the graph is not a readable ONNX model: {error}") from None


def _example(names: Sequence[str], shapes: dict[str, torch.Size]) -> list[torch.Tensor]:
    # Distinct tensors for every input: tracing with one tensor for both m and v aliases them.
    return [torch.zeros(shapes[n]) for n in names]


def build_step_graph(config: ModelConfig, *, trainable: Sequence[str] | None = None, check: bool = True) -> bytes:
    """The ONNX training-step graph of `config` for the parameters `trainable` (all when None).

    Raises GraphError when export fails or (with `check`) when ONNX Runtime's numbers are not torch's.
    """
    began = time.perf_counter()
    model = build_model(config, seed=0)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    names = list(shapes)
    chosen = list(names) if trainable is None else list(trainable)
    unknown = [n for n in chosen if n not in shapes]
    if unknown or not chosen:
        raise GraphError(f"the shard names no parameter of the model or unknown ones: {', '.join(unknown[:5])}")
    frozen = [n for n in names if n not in set(chosen)]
    from torch._decomp import core_aten_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.nn.attention import SDPBackend, sdpa_kernel

    batch, seq = 2, min(16, config.max_seq_len)
    args = (
        _example(chosen, shapes),
        _example(frozen, shapes),
        _example(chosen, shapes),
        _example(chosen, shapes),
        torch.zeros(batch, seq, dtype=torch.long),
        torch.zeros(batch, seq, dtype=torch.long),
        torch.tensor([1.0, 1e-3, 0.9, 0.95, 1e-8, 0.1, 1.0]),
    )
    step = _step_function(model, chosen, frozen)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            traced = make_fx(
                torch.func.functionalize(step, remove="mutations"),
                decomposition_table=dict(core_aten_decompositions()),
                tracing_mode="symbolic",
                _allow_non_fake_inputs=True,  # the rotary table, a constant of the graph
            )(*args)
        _drop_empty_fills(traced)
        batch_dim = torch.export.Dim("batch", min=1, max=4096)
        seq_dim = torch.export.Dim("seq", min=2, max=config.max_seq_len)
        tokens = {0: batch_dim, 1: seq_dim}
        dynamic = (
            [None] * len(chosen),
            [None] * len(frozen),
            [None] * len(chosen),
            [None] * len(chosen),
            tokens,
            tokens,
            None,
        )
        inputs, outputs = step_graph_names(names, chosen)
        graph = _export(_Flat(traced), args, dynamic, inputs, outputs)
    except GraphError:
        raise
    except Exception as error:  # the exporter raises many kinds; all mean the same to a caller
        raise GraphError(f"the training step could not be exported to ONNX: {type(error).__name__}: {error}") from error
    log.info("step graph of %d parameters built in %.1f s", len(chosen), time.perf_counter() - began)
    if check:
        result = check_step_graph(graph, config, trainable=chosen)
        if not result.passed:
            raise GraphError(
                f"the exported step does not compute torch's: loss differs by {result.loss_error:.2e} (limit "
                f"{MAX_LOSS_ERROR:g}), the update after {result.steps} steps by {result.delta_error:.2e} "
                f"(limit {MAX_DELTA_ERROR:g})"
            )
    return graph


def build_loss_graph(config: ModelConfig, *, check: bool = True) -> bytes:
    """The ONNX forward/loss graph of `config`: every parameter an input, the mean loss the output."""
    model = build_model(config, seed=0)
    names = [n for n, _ in model.named_parameters()]
    model_loss = _functional_loss(model)

    class Loss(torch.nn.Module):
        def forward(self, params: list[torch.Tensor], ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return model_loss(dict(zip(names, params, strict=True)), ids, targets)

    from torch.nn.attention import SDPBackend, sdpa_kernel

    params = [p.detach().clone() for p in model.parameters()]
    seq = min(16, config.max_seq_len)
    args = (params, torch.zeros(2, seq, dtype=torch.long), torch.zeros(2, seq, dtype=torch.long))
    tokens = {0: torch.export.Dim("batch", min=1, max=4096), 1: torch.export.Dim("seq", min=2, max=config.max_seq_len)}
    try:
        with sdpa_kernel(SDPBackend.MATH):
            graph = _export(
                Loss(),
                args,
                ([None] * len(names), tokens, tokens),
                [*(f"param.{n}" for n in names), "input_ids", "targets"],
                ["loss"],
            )
    except GraphError:
        raise
    except Exception as error:
        raise GraphError(f"the loss could not be exported to ONNX: {type(error).__name__}: {error}") from error
    if check:
        result = check_loss_graph(graph, config)
        if not result.passed:
            raise GraphError(
                f"the exported loss differs from torch's by {result.loss_error:.2e} (limit {MAX_LOSS_ERROR:g})"
            )
    return graph


def ort_session(graph: bytes, *, threads: int = 1, providers: Sequence[str] = ("CPUExecutionProvider",)) -> Any:
    """An ONNX Runtime session for `graph` (graph optimizations on: ORT's own keep the numbers)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(graph, sess_options=options, providers=list(providers))


class OrtInnerLoop:
    """InnerLoop's H steps with ONNX Runtime and a step graph: same batches, same schedule, same result."""

    def __init__(
        self,
        graph: bytes,
        config: InnerConfig,
        params: dict[str, np.ndarray],
        *,
        trainable: Sequence[str],
        global_step: int,
        threads: int = 1,
    ) -> None:
        self.config = config
        self.global_step = global_step
        self.session = ort_session(graph, threads=threads)
        self.trainable = list(trainable)
        chosen = set(self.trainable)
        self.frozen = {n: np.ascontiguousarray(p, dtype=np.float32) for n, p in params.items() if n not in chosen}
        missing = [n for n in self.trainable if n not in params]
        if missing:
            raise ValueError(f"no weights for the shard's parameters {', '.join(missing[:5])}")
        self.start = {n: np.array(params[n], dtype=np.float32) for n in self.trainable}
        self.params = {n: self.start[n].copy() for n in self.trainable}
        self.m = {n: np.zeros_like(self.start[n]) for n in self.trainable}
        self.v = {n: np.zeros_like(self.start[n]) for n in self.trainable}
        inputs, self.outputs = step_graph_names([*self.trainable, *self.frozen], self.trainable)
        if sorted(i.name for i in self.session.get_inputs()) != sorted(inputs) or sorted(
            o.name for o in self.session.get_outputs()
        ) != sorted(self.outputs):
            raise ValueError("the step graph is for another model or shard than these weights")
        self.step = 0
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.seconds = 0.0

    def run(
        self,
        tokens: np.ndarray | torch.Tensor,
        *,
        on_step: Callable[[StepReport], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> InnerResult:
        config = self.config
        micro = unit_batches(tokens, config)
        while self.step < config.steps:
            if should_stop is not None and should_stop():
                return self.result(finished=False)
            began = time.perf_counter()
            batches = micro[self.step * config.grad_accum : (self.step + 1) * config.grad_accum]
            ids = torch.cat([x for x, _ in batches]).numpy()
            targets = torch.cat([y for _, y in batches]).numpy()
            lr = unit_learning_rate(config, self.global_step, self.step)
            hyper = np.array(
                [self.step + 1, lr, config.beta1, config.beta2, config.eps, config.weight_decay, config.grad_clip],
                dtype=np.float32,
            )
            feed = {f"param.{n}": p for n, p in self.params.items()}
            feed |= {f"frozen.{n}": p for n, p in self.frozen.items()}
            feed |= {f"m.{n}": x for n, x in self.m.items()} | {f"v.{n}": x for n, x in self.v.items()}
            feed |= {"input_ids": ids, "targets": targets, "hyper": hyper}
            out = dict(zip(self.outputs, self.session.run(self.outputs, feed), strict=True))
            loss = float(out["loss"])
            if not math.isfinite(loss):
                raise FloatingPointError(f"training diverged: loss {loss} at step {self.step + 1}")
            for name in self.trainable:
                new = (out[f"new_param.{name}"], out[f"new_m.{name}"], out[f"new_v.{name}"])
                if any(t.shape != self.start[name].shape or t.dtype != np.float32 for t in new):
                    raise ValueError(f"the step graph returned {name} in another shape or type than it was given")
                self.params[name], self.m[name], self.v[name] = new
            self.step += 1
            self.losses.append(loss)
            self.grad_norms.append(float(out["grad_norm"]))
            self.seconds += time.perf_counter() - began
            if on_step is not None:
                on_step(StepReport(self.step, config.steps, loss, lr, self.step * config.tokens_per_step))
        return self.result(finished=True)

    def state_dict(self) -> dict[str, Any]:
        """What a local checkpoint needs to resume the unit (as InnerLoop.state_dict, for this loop)."""

        def tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
            return {n: torch.from_numpy(np.array(a, dtype=np.float32)) for n, a in arrays.items()}

        return {
            "runtime": "onnxruntime",
            "step": self.step,
            "losses": list(self.losses),
            "grad_norms": list(self.grad_norms),
            "seconds": self.seconds,
            "start": tensors(self.start),
            "params": tensors(self.params),
            "m": tensors(self.m),
            "v": tensors(self.v),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`'s output; raises ValueError (or KeyError) for another unit's."""
        if state.get("runtime") != "onnxruntime":
            raise ValueError("the checkpoint was written by another runtime")
        for part in ("start", "params", "m", "v"):
            arrays = {n: np.asarray(t.numpy(), dtype=np.float32) for n, t in state[part].items()}
            if sorted(arrays) != sorted(self.trainable) or any(
                arrays[n].shape != self.start[n].shape for n in self.trainable
            ):
                raise ValueError("the checkpoint is for a different model shard")
            setattr(self, part, arrays)
        self.step = int(state["step"])
        self.losses = [float(x) for x in state["losses"]]
        self.grad_norms = [float(x) for x in state["grad_norms"]]
        self.seconds = float(state["seconds"])

    def result(self, *, finished: bool) -> InnerResult:
        delta = {n: torch.from_numpy(self.start[n] - self.params[n]) for n in self.trainable}
        return InnerResult(
            delta=delta,
            losses=list(self.losses),
            tokens=self.step * self.config.tokens_per_step,
            seconds=self.seconds,
            finished=finished,
        )


def _relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    num = math.sqrt(sum(float((a[n] - b[n]).double().norm()) ** 2 for n in b))
    den = math.sqrt(sum(float(b[n].double().norm()) ** 2 for n in b))
    return num / den if den > 0 else num


def check_step_graph(
    graph: bytes, config: ModelConfig, *, trainable: Sequence[str] | None = None, seed: int = 0
) -> GraphCheck:
    """Run `CHECK_STEPS` steps with ONNX Runtime and with InnerLoop from the same weights and tokens."""
    began = time.perf_counter()
    model = build_model(config, seed=seed)
    names = [n for n, _ in model.named_parameters()]
    chosen = list(names) if trainable is None else list(trainable)
    inner = InnerConfig(
        steps=CHECK_STEPS, batch_size=2, seq_len=min(32, config.max_seq_len), grad_accum=2, lr=3e-3, warmup_steps=2
    )
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, config.vocab_size, (inner.tokens_needed,), generator=generator)
    params = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    ort = OrtInnerLoop(graph, inner, params, trainable=chosen, global_step=0).run(tokens)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        ref = InnerLoop(model, inner, global_step=0, trainable=chosen).run(tokens)
    loss_error = max(abs(a - b) / abs(b) for a, b in zip(ort.losses, ref.losses, strict=True))
    return GraphCheck(loss_error, _relative(ort.delta, ref.delta), CHECK_STEPS, time.perf_counter() - began)


def check_loss_graph(graph: bytes, config: ModelConfig, *, seed: int = 0) -> GraphCheck:
    """The loss graph's loss against GPT.loss on the same weights and random tokens."""
    began = time.perf_counter()
    model = build_model(config, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (3, min(32, config.max_seq_len)), generator=generator)
    targets = torch.randint(0, config.vocab_size, ids.shape, generator=generator)
    session = ort_session(graph)
    feed = {f"param.{n}": p.detach().numpy() for n, p in model.named_parameters()}
    (loss,) = session.run(None, feed | {"input_ids": ids.numpy(), "targets": targets.numpy()})
    with torch.no_grad():
        expected = float(model.loss(ids, targets))
    return GraphCheck(abs(float(loss) - expected) / abs(expected), 0.0, 0, time.perf_counter() - began)
