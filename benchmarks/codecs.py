"""Benchmark of the tensor codecs on a synthetic pseudo-gradient: size, speed and error.

    >>> rows = measure_codecs(numel=20_000, repeats=1)
    >>> [row.codec for row in rows]
    ['fp32', 'fp16', 'bf16', 'int8', 'topk', 'dct', 'int4', 'int2', 'sign1']
    >>> print(format_codec_table(rows).splitlines()[0])
    | codec | bytes/param | vs fp32 | encode MB/s | decode MB/s | max abs err | rel L2 err | bound |

Throughput is measured on the float32 size of the input (4 bytes per parameter), best of ``repeats``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from protocol.codecs import CODEC_NAMES, CodecConfig, TensorSpec, decode, encode, error_bound


@dataclass(frozen=True)
class CodecRow:
    codec: str
    bytes_per_param: float
    compression_vs_fp32: float
    encode_mb_s: float
    decode_mb_s: float
    max_abs_error: float
    rel_l2_error: float
    bound: float


def synthetic_update(numel: int = 2_000_000, seed: int = 0) -> dict[str, torch.Tensor]:
    """Tensors shaped like a small GPT's pseudo-gradient, about ``numel`` parameters in all.

    Values are Gaussian with a log-normal scale per tensor and per row (updates differ in magnitude
    between layers and between rows), plus 0.1% outliers ten times larger.
    """
    gen = torch.Generator().manual_seed(seed)
    width = 256 if numel >= 1_000_000 else 64
    shapes: list[tuple[str, tuple[int, ...]]] = [("wte", (max(1, numel // 4 // width), width))]
    layer = [
        ("attn.qkv", (3 * width, width)),
        ("attn.proj", (width, width)),
        ("mlp.up", (4 * width, width)),
        ("mlp.down", (width, 4 * width)),
        ("ln.weight", (width,)),
        ("ln.bias", (width,)),
    ]
    per_layer = sum(math.prod(shape) for _, shape in layer)
    remaining = numel - math.prod(shapes[0][1])
    index = 0
    while remaining >= per_layer:
        shapes.extend((f"h.{index}.{name}", shape) for name, shape in layer)
        remaining -= per_layer
        index += 1
    if remaining > 0:
        shapes.append(("head", (remaining,)))
    update: dict[str, torch.Tensor] = {}
    for name, shape in shapes:
        rows = shape[0] if len(shape) > 1 else 1
        tensor_scale = 1e-3 * math.exp(float(torch.randn(1, generator=gen)))
        row_scale = torch.exp(0.5 * torch.randn(rows, 1, generator=gen)) * tensor_scale
        values = torch.randn(rows, math.prod(shape) // rows, generator=gen) * row_scale
        outliers = torch.rand(values.shape, generator=gen) < 1e-3
        values = torch.where(outliers, values * 10, values)
        update[name] = values.reshape(shape)
    return update


def measure_codecs(
    numel: int = 2_000_000,
    repeats: int = 3,
    seed: int = 0,
    configs: Sequence[CodecConfig] | None = None,
    threads: int | None = None,
) -> list[CodecRow]:
    """Encode and decode :func:`synthetic_update` with each codec (default settings unless given).

    ``threads`` sets torch's intra-op threads for the run (restored afterwards); on a loaded machine
    ``threads=1`` gives steadier numbers than OpenMP threads competing for busy cores.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _measure(numel, repeats, seed, configs)
    finally:
        torch.set_num_threads(previous)


def _measure(numel: int, repeats: int, seed: int, configs: Sequence[CodecConfig] | None) -> list[CodecRow]:
    update = synthetic_update(numel, seed)
    specs = {name: TensorSpec.of(t) for name, t in update.items()}
    params = sum(t.numel() for t in update.values())
    fp32_mb = 4 * params / 1e6
    norm = math.sqrt(sum(float(t.double().square().sum()) for t in update.values()))
    rows = []
    for config in configs or [CodecConfig.from_name(name) for name in CODEC_NAMES]:
        encode_s, decode_s = math.inf, math.inf
        data = b""
        decoded: dict[str, torch.Tensor] = {}
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            data = encode(update, config)
            encode_s = min(encode_s, time.perf_counter() - start)
            start = time.perf_counter()
            decoded = decode(data, specs, max_bytes=len(data))
            decode_s = min(decode_s, time.perf_counter() - start)
        errors = [(update[name].double() - decoded[name].double()) for name in update]
        rows.append(
            CodecRow(
                codec=config.name,
                bytes_per_param=len(data) / params,
                compression_vs_fp32=4 * params / len(data),
                encode_mb_s=fp32_mb / encode_s,
                decode_mb_s=fp32_mb / decode_s,
                max_abs_error=max(float(e.abs().max()) for e in errors),
                rel_l2_error=math.sqrt(sum(float(e.square().sum()) for e in errors)) / norm,
                bound=max(error_bound(t, config) for t in update.values()),
            )
        )
    return rows


def format_codec_table(rows: Sequence[CodecRow]) -> str:
    """A markdown table of benchmark rows."""
    lines = [
        "| codec | bytes/param | vs fp32 | encode MB/s | decode MB/s | max abs err | rel L2 err | bound |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.codec} | {r.bytes_per_param:.4f} | {r.compression_vs_fp32:.1f}x | {r.encode_mb_s:.0f} "
            f"| {r.decode_mb_s:.0f} | {r.max_abs_error:.3g} | {r.rel_l2_error:.3g} | {r.bound:.3g} |"
        )
    return "\n".join(lines)
