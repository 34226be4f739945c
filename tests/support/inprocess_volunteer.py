"""An honest (or deliberately dishonest) volunteer in-process, for coordinator tests."""

from __future__ import annotations

import numpy as np
import torch

from coordinator.engine import Assignment, SubmissionReport
from coordinator.service import Coordinator
from protocol.codecs import encode
from protocol.moments import decode_moments, encode_moments
from training.checkpoint import load_weights
from training.inner import InnerLoop
from training.model import build_model
from training.moments import as_records, from_records, loop_moments, seed_loop


def train(service: Coordinator, unit: Assignment) -> tuple[dict[str, torch.Tensor], SubmissionReport]:
    """What a volunteer computes for `unit`: the pseudo-gradient and its metrics."""
    delta, report, _ = train_with_moments(service, unit)
    return delta, report


def train_with_moments(
    service: Coordinator, unit: Assignment
) -> tuple[dict[str, torch.Tensor], SubmissionReport, bytes]:
    """`train`, plus the moments frame of the unit's final AdamW v (seeded from its version's, if any)."""
    model = build_model(unit.model_config)
    model.load_state_dict(load_weights(service.blobs.get(unit.checkpoint.checkpoint_sha)), strict=False)
    dtype = np.uint16 if unit.data_dtype == "uint16" else np.uint32
    tokens = np.frombuffer(service.blobs.get(unit.unit.data_sha), dtype=dtype).astype(np.int64)
    runtime = service.runtimes[unit.campaign.id]
    config = runtime.inner_config
    loop = InnerLoop(model, config, global_step=unit.global_step, trainable=unit.unit.shard)
    shared = unit.checkpoint.moments_sha
    if config.shared_moments and shared is not None:
        shapes = runtime.state.shapes
        seed_loop(loop, from_records(decode_moments(service.blobs.get(shared), shapes), shapes))
    result = loop.run(tokens)
    moments = encode_moments(as_records(loop_moments(loop)))
    return result.delta, SubmissionReport(losses=result.losses, tokens=result.tokens, seconds=result.seconds), moments


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
