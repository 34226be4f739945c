"""An ONNX model of next-token logits that onnxruntime (and any ONNX inference runtime) runs.

    >>> write_onnx(path, weights, config)      # checked against torch before it is kept
    >>> session.run(["logits"], {"input_ids": ids})[0]       # float32, batch × seq × vocab

Input `input_ids` (int64, batch × seq, seq ≤ the model's context), output `logits` (float32,
batch × seq × vocab). There is no KV cache: each call runs the whole sequence, so generating n tokens
costs n full forward passes — simple and exact, and fine for the sizes volunteers train; a cached
graph is left for later. The weights are stored inside the one file, so models over 2 GB of fp32
weights (ONNX's limit for one file) are refused: export those as hf or gguf. Like every graph in
this project, it is run with ONNX Runtime against torch on the same tokens before it is written
(`MAX_LOGITS_ERROR`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from training.checkpoint import CheckpointError
from training.export.llama import ExportError
from training.generate import model_from_weights
from training.model import GPT, ModelConfig

__all__ = ["MAX_LOGITS_ERROR", "check_onnx_logits", "write_onnx"]

MAX_LOGITS_ERROR = 1e-4  # largest |torch − onnxruntime| logit difference accepted (fp32)
MAX_ONNX_BYTES = 1_900_000_000  # protobuf's 2 GB limit, less room for the graph itself
OPSET = 18


class _Logits(torch.nn.Module):
    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(input_ids)
        return logits


def _model(weights: Mapping[str, torch.Tensor], config: ModelConfig) -> GPT:
    try:
        return model_from_weights(weights, config)
    except CheckpointError as error:
        raise ExportError(str(error)) from None


def check_onnx_logits(path: Path, model: GPT, *, seed: int = 0) -> float:
    """The largest |logit| difference between onnxruntime on `path` and torch, on random tokens."""
    import onnxruntime

    generator = torch.Generator().manual_seed(seed)
    seq = min(24, model.config.max_seq_len)
    ids = torch.randint(0, model.config.vocab_size, (2, seq), generator=generator)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    (ours,) = session.run(["logits"], {"input_ids": ids.numpy()})
    with torch.no_grad():
        reference = model(ids)
    return float((torch.from_numpy(ours) - reference).abs().max())


def write_onnx(path: Path, weights: Mapping[str, torch.Tensor], config: ModelConfig, *, check: bool = True) -> Path:
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency)
    except ImportError as error:
        raise ExportError("ONNX export needs onnx and onnxscript (pip install 'commonweights[onnx]')") from error
    from torch.nn.attention import SDPBackend, sdpa_kernel

    size = sum(t.numel() for t in weights.values()) * 4
    if size > MAX_ONNX_BYTES:
        raise ExportError(
            f"the model's fp32 weights are {size / 1e9:.1f} GB; one ONNX file holds at most 2 GB: "
            "export hf or gguf instead"
        )
    model = _model(weights, config)
    example = torch.zeros(1, min(8, config.max_seq_len), dtype=torch.long)
    dims = {0: torch.export.Dim("batch", min=1, max=4096), 1: torch.export.Dim("seq", min=1, max=config.max_seq_len)}
    try:
        with sdpa_kernel(SDPBackend.MATH), torch.no_grad():
            program = torch.onnx.export(
                _Logits(model).eval(),
                (example,),
                dynamo=True,
                optimize=False,  # the optimizer folds away additions of small constants
                opset_version=OPSET,
                dynamic_shapes=({**dims},),
                input_names=["input_ids"],
                output_names=["logits"],
                verbose=False,
            )
    except Exception as error:
        raise ExportError(f"the model could not be exported to ONNX: {type(error).__name__}: {error}") from error
    if program is None:
        raise ExportError("the ONNX exporter returned no program")
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    if check:
        difference = check_onnx_logits(path, model)
        if not difference <= MAX_LOGITS_ERROR:
            path.unlink()
            raise ExportError(
                f"the ONNX graph's logits differ from torch's by {difference:.2e} (limit {MAX_LOGITS_ERROR:g})"
            )
    return path
