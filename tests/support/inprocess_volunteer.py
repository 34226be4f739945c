"""An honest (or deliberately dishonest) volunteer in-process, for coordinator tests."""

from __future__ import annotations

import numpy as np
import torch

from coordinator.engine import Assignment, SubmissionReport
from coordinator.service import Coordinator
from protocol.codecs import encode
from training.checkpoint import load_weights
from training.inner import InnerLoop
from training.model import build_model


def train(service: Coordinator, unit: Assignment) -> tuple[dict[str, torch.Tensor], SubmissionReport]:
    """What a volunteer computes for `unit`: the pseudo-gradient and its metrics."""
    model = build_model(unit.model_config)
    model.load_state_dict(load_weights(service.blobs.get(unit.checkpoint.checkpoint_sha)), strict=False)
    dtype = np.uint16 if unit.data_dtype == "uint16" else np.uint32
    tokens = np.frombuffer(service.blobs.get(unit.unit.data_sha), dtype=dtype).astype(np.int64)
    runtime = service.runtimes[unit.campaign.id]
    config = runtime.inner_config
    loop = InnerLoop(model, config, global_step=unit.global_step, trainable=unit.unit.shard)
    result = loop.run(tokens)
    return result.delta, SubmissionReport(losses=result.losses, tokens=result.tokens, seconds=result.seconds)


def payload(service: Coordinator, unit: Assignment, delta: dict[str, torch.Tensor]) -> bytes:
    return encode(delta, service.runtimes[unit.campaign.id].spec.codec)


def nan_frame(delta: dict[str, torch.Tensor]) -> bytes:
    """An fp32 frame whose first value is NaN: what a diverged or malicious volunteer could send.

    The codec refuses to encode NaN, so the bytes are patched after encoding, at the first
    tensor's payload (layout in protocol/codecs/frame.py).
    """
    from protocol.codecs import CodecConfig

    frame = bytearray(encode(delta, CodecConfig.from_name("fp32")))
    name_len = int.from_bytes(frame[12:14], "little")
    ndim = frame[14 + name_len + 1]
    payload_at = 14 + name_len + 2 + 4 * ndim + 8
    frame[payload_at : payload_at + 4] = np.array([np.nan], dtype="<f4").tobytes()
    return bytes(frame)
