"""Benchmark of the tensor codecs on a synthetic pseudo-gradient: size, speed and error.

    >>> rows = measure_codecs(numel=20_000, repeats=1)
    >>> [row.codec for row in rows]
    ['fp32', 'fp16', 'bf16', 'int8', 'topk', 'dct', 'int4', 'int2', 'sign1']
    >>> print(format_codec_table(rows).splitlines()[0])
    | codec | bytes/param | vs fp32 | encode MB/s | decode MB/s | max abs err | rel L2 err | bound |

Throughput is measured on the float32 size of the input (4 bytes per parameter), best of ``repeats``.

:func:`compare_int8_with_hivemind` times our int8 frame encoder against a faithful re-implementation
of hivemind's ``Uniform8BitQuantization`` on the same tensors in the same run.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from benchmarks.report import machine_line, write_section
from protocol.codecs import CODEC_NAMES, CodecConfig, TensorSpec, decode, encode, error_bound
from training.progress import progress_bar


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


@dataclass(frozen=True)
class Int8Comparison:
    tensor: str
    numel: int
    ours_encode_mb_s: float
    hivemind_encode_mb_s: float
    ours_rel_l2_error: float
    hivemind_rel_l2_error: float
    ours_max_abs_error: float
    hivemind_max_abs_error: float

    @property
    def speedup(self) -> float:
        return self.ours_encode_mb_s / self.hivemind_encode_mb_s


# hivemind's Uniform8BitQuantization: 256 bins spanning 6 standard deviations around the mean.
_HIVEMIND_BINS = 256
_HIVEMIND_RANGE_IN_SIGMAS = 6


def hivemind_uniform8bit_encode(tensor: torch.Tensor) -> bytes:
    """Re-implementation of hivemind's ``Uniform8BitQuantization.compress`` buffer (hivemind 1.1,
    ``hivemind/compression/quantization.py``), named as such: it is not hivemind's code.

    The same steps in the same order: centre on the mean, scale = 6·std/256, quantize per tensor to
    uint8 with zero point 128 (``torch.quantize_per_tensor``), then a codebook of each bin's mean
    value; the buffer is the int64 codebook length, the float32 codebook and the uint8 indices. The
    protobuf message hivemind wraps it in is left out, which only flatters hivemind.
    """
    offset = _HIVEMIND_BINS // 2
    shift = tensor.mean()
    centered = tensor - shift
    std_unbiased = centered.norm() / math.sqrt(centered.numel() - 1)
    scale = _HIVEMIND_RANGE_IN_SIGMAS * std_unbiased / _HIVEMIND_BINS
    with warnings.catch_warnings():  # torch deprecates quantized tensors; hivemind still uses them
        warnings.simplefilter("ignore")
        quantized = torch.quantize_per_tensor(centered, float(scale), offset, torch.quint8).int_repr()
    flat_q = quantized.flatten()
    bin_sums = torch.zeros(_HIVEMIND_BINS).scatter_add_(0, flat_q.long(), tensor.flatten())
    bin_counts = torch.clamp_min_(torch.bincount(flat_q, minlength=_HIVEMIND_BINS), 1)
    codebook = np.asarray(bin_sums / bin_counts, dtype=np.float32)
    indices = np.asarray(quantized, dtype=np.uint8)
    return b"".join((np.int64(len(codebook)).tobytes(), codebook.tobytes(), indices.tobytes()))


def hivemind_uniform8bit_decode(data: bytes, numel: int) -> torch.Tensor:
    """The inverse of :func:`hivemind_uniform8bit_encode` (hivemind's ``extract``): ``codebook[index]``."""
    size = int(np.frombuffer(data, dtype=np.int64, count=1)[0])
    codebook = torch.from_numpy(np.frombuffer(data, dtype=np.float32, count=size, offset=8).copy())
    indices = np.frombuffer(data, dtype=np.uint8, count=numel, offset=8 + 4 * size)
    return codebook[torch.from_numpy(indices.astype(np.int64))]


def pseudo_gradient(numel: int, *, outliers: bool, seed: int = 0) -> torch.Tensor:
    """One flat tensor drawn like a pseudo-gradient: Gaussian rows of 4,096 with a log-normal scale
    per row, optionally with 0.1% of values ten times larger."""
    gen = torch.Generator().manual_seed(seed)
    width = 4096
    rows = -(-numel // width)
    scale = torch.exp(0.5 * torch.randn(rows, 1, generator=gen)) * 1e-3
    values = (torch.randn(rows, width, generator=gen) * scale).reshape(-1)[:numel]
    if outliers:
        values = torch.where(torch.rand(numel, generator=gen) < 1e-3, values * 10, values)
    return values.contiguous()


def compare_int8_with_hivemind(
    numel: int = 16 * 2**20, repeats: int = 3, seed: int = 0, threads: int | None = None
) -> list[Int8Comparison]:
    """Encode speed and error of our int8 frame and hivemind's Uniform8Bit on the same tensors.

    Runs alternate between the two encoders so that a busy machine slows both alike; each figure is
    the best of ``repeats``. Ours is the whole frame encoder (finite check, framing, bytes), not only
    the quantizer.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return [
            _compare(label, pseudo_gradient(numel, outliers=outliers, seed=seed), repeats)
            for label, outliers in (("Gaussian rows", False), ("with 0.1% outliers ×10", True))
        ]
    finally:
        torch.set_num_threads(previous)


def _compare(label: str, tensor: torch.Tensor, repeats: int) -> Int8Comparison:
    config = CodecConfig("int8")
    spec = {"update": TensorSpec.of(tensor)}
    ours_s, theirs_s = math.inf, math.inf
    ours, theirs = b"", b""
    encode({"update": tensor}, config)  # warm-up: first calls pay for allocator growth and lazy init
    hivemind_uniform8bit_encode(tensor)
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        ours = encode({"update": tensor}, config)
        ours_s = min(ours_s, time.perf_counter() - start)
        start = time.perf_counter()
        theirs = hivemind_uniform8bit_encode(tensor)
        theirs_s = min(theirs_s, time.perf_counter() - start)
    mb = 4 * tensor.numel() / 1e6
    reference = tensor.double()
    norm = float(reference.norm())
    ours_error = decode(ours, spec, max_bytes=len(ours))["update"].double() - reference
    theirs_error = hivemind_uniform8bit_decode(theirs, tensor.numel()).double() - reference
    return Int8Comparison(
        tensor=label,
        numel=tensor.numel(),
        ours_encode_mb_s=mb / ours_s,
        hivemind_encode_mb_s=mb / theirs_s,
        ours_rel_l2_error=float(ours_error.norm()) / norm,
        hivemind_rel_l2_error=float(theirs_error.norm()) / norm,
        ours_max_abs_error=float(ours_error.abs().max()),
        hivemind_max_abs_error=float(theirs_error.abs().max()),
    )


def format_int8_comparison(rows: Sequence[Int8Comparison]) -> str:
    """A markdown table of :func:`compare_int8_with_hivemind`, with the 2× target stated per row."""
    lines = [
        "| tensor | elements | int8 encode MB/s | hivemind Uniform8Bit MB/s | speed-up (target ≥ 2×) "
        "| rel L2 err (ours / hivemind) | max abs err (ours / hivemind) |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in rows:
        verdict = "met" if r.speedup >= 2 else "missed"
        lines.append(
            f"| {r.tensor} | {r.numel:,} | {r.ours_encode_mb_s:.0f} | {r.hivemind_encode_mb_s:.0f} "
            f"| {r.speedup:.1f}× ({verdict}) | {r.ours_rel_l2_error:.3g} / {r.hivemind_rel_l2_error:.3g} "
            f"| {r.ours_max_abs_error:.3g} / {r.hivemind_max_abs_error:.3g} |"
        )
    return "\n".join(lines)


def run_bench_command(args: argparse.Namespace) -> int:
    """`commonweights bench codecs`: both tables, printed and written to the `codecs` section."""
    from rich.console import Console

    console = Console(quiet=args.quiet)
    threads = args.threads
    with progress_bar("codec table", quiet=args.quiet, console=console) as update:
        configs = [CodecConfig.from_name(name) for name in CODEC_NAMES]
        rows = []
        for i, config in enumerate(configs):
            rows += measure_codecs(numel=args.params, repeats=args.repeats, configs=[config], threads=threads)
            update(i + 1, len(configs), config.name)
    codec_table = format_codec_table(rows)
    print(codec_table)
    console.print(f"int8 against hivemind's Uniform8Bit on {args.compare_elements:,} elements …")
    comparison = format_int8_comparison(
        compare_int8_with_hivemind(numel=args.compare_elements, repeats=args.repeats, threads=threads)
    )
    print(comparison)
    body = "\n\n".join(
        [
            "## Codecs (`commonweights bench codecs`)",
            machine_line(),
            f"Every codec at its default settings on a {args.params / 1e6:g}M-parameter synthetic update shaped "
            "like a small GPT's pseudo-gradient (log-normal scale per tensor and per row, 0.1% outliers ten times "
            "larger). Throughput is MB/s of fp32 input through the whole frame encoder and decoder, best of "
            f"{args.repeats}; the worst-case error is the largest absolute difference after a round trip, next "
            "to the bound the codec states.",
            codec_table,
            "### int8 against hivemind",
            "Our int8 frame encoder (block 256, absmax scales, finite check and framing included) against a "
            "re-implementation of hivemind's `Uniform8BitQuantization` (`benchmarks/codecs.py`: the same "
            "torch calls in the same order, without hivemind's protobuf wrapper) on the same "
            f"{args.compare_elements:,}-element fp32 tensors in the same run, alternating, best of "
            f"{args.repeats}. Target: at least 2× hivemind's encode speed, keeping the lower error.",
            comparison,
        ]
    )
    write_section(args.output, "codecs", body)
    console.print(f"wrote {args.output}")
    return 0
