"""The browser volunteer's JavaScript (coordinator/static/js/volunteer/) against the Python reference.

This test writes byte vectors made by the reference implementation — frames, update payloads, a
checkpoint, learning rates and batches — and runs `node --test tests/js/` on them, so the page's
encoders are checked without a browser. Skipped, saying why, where Node.js is missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import msgpack
import msgspec
import pytest
import torch

from protocol.checkpoints import CheckpointFormatError, apply_delta, checkpoint_bytes, make_delta
from protocol.codecs import CodecConfig, CodecError
from protocol.codecs import encode as encode_update
from protocol.errors import ErrorCode
from protocol.messages import (
    Abandon,
    BlobChunk,
    BlobRef,
    BlobRequest,
    Capabilities,
    Device,
    ErrorMessage,
    Goodbye,
    Hello,
    InnerRecipe,
    Keepalive,
    ModelConfig,
    ModelSpec,
    NoWork,
    Progress,
    Report,
    RequestWork,
    Result,
    Submit,
    TrainMetrics,
    Welcome,
    WorkUnit,
    encode,
)
from protocol.moments import decode_moments, encode_moments
from protocol.version import PROTOCOL_VERSION
from tests.support.live import REPO
from training.checkpoint import save_weights
from training.inner import InnerConfig, learning_rate, unit_batches, unit_learning_rate
from training.moments import as_records, expand, factor, from_records

NODE = shutil.which("node")
UNIT = {"unit_id": "u-42", "lease_id": "l-42-1", "recipe": {"steps": 4}}
SHA = "ab" * 32


def _hello() -> dict[str, Any]:
    args = {
        "token": None,
        "name": "Browser on Linux",
        "clientVersion": "0.1.0",
        "memoryBytes": 2 << 30,
        "threads": 2,
        "platform": "web-linux-x86_64",
        "deviceName": "browser (wasm)",
    }
    message = Hello(
        protocol_version=PROTOCOL_VERSION,
        client_version=args["clientVersion"],
        token=None,
        name=args["name"],
        capabilities=Capabilities(
            devices=(Device("cpu", args["deviceName"], args["memoryBytes"]),),
            memory_bytes=args["memoryBytes"],
            threads=args["threads"],
            codecs=("fp32", "int8"),
            platform=args["platform"],
            runtimes=("onnxruntime",),
            unit_kinds=("train", "evaluate", "check"),
        ),
    )
    return {"args": args, "hex": encode(message).hex()}


def _sent() -> dict[str, Any]:
    update = bytes(range(16))
    metrics = {"losses": [9.01, 8.72, 8.4, 8.13], "tokens": 512, "seconds": 3.5, "deviceName": "browser (wasm)"}
    wire = TrainMetrics(
        losses=(9.01, 8.72, 8.4, 8.13),
        tokens=512,
        seconds=3.5,
        device="cpu",
        device_name="browser (wasm)",
        runtime="onnxruntime",
    )
    sha = hashlib.sha256(update).hexdigest()
    return {
        "unit": UNIT,
        "hello": _hello(),
        "request_work": {"hex": encode(RequestWork()).hex()},
        "blob_request": {
            "args": {"sha256": SHA, "offset": 4 << 20, "length": 4 << 20},
            "hex": encode(BlobRequest(SHA, 4 << 20, 4 << 20)).hex(),
        },
        "progress": {
            "args": {"step": 2, "loss": 8.72, "tokens": 256, "phase": "training"},
            "hex": encode(Progress("u-42", "l-42-1", 2, 4, 8.72, 256, "training")).hex(),
        },
        "submit": {
            "args": {"update": update.hex(), "update_sha256": sha, "metrics": metrics, "moments": "0102"},
            "hex": encode(Submit("u-42", "l-42-1", update, sha, wire)).hex(),
            "with_moments_hex": encode(Submit("u-42", "l-42-1", update, sha, wire, b"\x01\x02")).hex(),
        },
        "abandon": {"hex": encode(Abandon("u-42", "l-42-1", "user_request", "tab closed")).hex()},
        "report": {
            "args": {"losses": [5.25, 5.125, 4.875], "seconds": 1.5, "deviceName": "browser (wasm)"},
            "hex": encode(
                Report("u-42", "l-42-1", (5.25, 5.125, 4.875), 1.5, "cpu", "browser (wasm)", "onnxruntime")
            ).hex(),
        },
        "goodbye": {"hex": encode(Goodbye("tab closed")).hex()},
        "keepalive": {"hex": encode(Keepalive()).hex()},
    }


def _received() -> dict[str, Any]:
    config = ModelConfig(
        vocab_size=512, d_model=64, n_layer=2, n_head=4, d_ff=128, max_seq_len=128, rope_theta=10000.0, norm_eps=1e-5
    )
    recipe = InnerRecipe(
        steps=4, batch_size=2, seq_len=64, grad_accum=1, lr=3e-3, min_lr_ratio=0.1, warmup_steps=10,
        total_steps=1000, global_step=40, weight_decay=0.1, grad_clip=1.0, beta1=0.9, beta2=0.95, eps=1e-8,
    )  # fmt: skip
    messages = {
        "welcome": Welcome("v-7", "tok.new", "0.1.0", 15.0, 1 << 20, None, 12.5),
        "work_unit": WorkUnit(
            kind="train",
            runtime="onnxruntime",
            unit_id="u-42",
            lease_id="l-42-1",
            lease_deadline=1.75e9,
            campaign_id="3",
            campaign_name="TinyStories",
            model_version=7,
            model=ModelSpec("tiny", config),
            checkpoint=BlobRef(SHA, 123_456),
            checkpoint_format="safetensors",
            data=BlobRef("cd" * 32, 1026),
            data_dtype="uint16",
            data_tokens=513,
            shard=("embed.weight",),
            shard_shapes={"embed.weight": (512, 64)},
            recipe=recipe,
            seed=9,
            codec={"name": "int8", "block_size": 256},
            max_update_bytes=1 << 20,
            graph=BlobRef("ef" * 32, 2_800_000),
        ),
        "no_work": NoWork(12.0, "building the ONNX step graph"),
        "blob_chunk": BlobChunk(SHA, 0, 3, b"\x00\x01\xff"),
        "result": Result("u-42", "l-42-1", "accepted", None, "accepted", 0.5),
        "error": ErrorMessage(ErrorCode.LEASE_EXPIRED, "the lease ended", False, "progress", "u-42"),
    }

    def builtin(value: object) -> object:
        if isinstance(value, bytes):
            return {"__bin__": value.hex()}
        return msgspec.to_builtins(value)

    return {
        name: {
            "hex": encode(message).hex(),
            "json": json.dumps({f.name: builtin(getattr(message, f.name)) for f in msgspec.structs.fields(message)}),
        }
        for name, message in messages.items()
    }


def _updates() -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(5)
    ties = torch.tensor([127.0, 2.5, -1.5, 0.5, 0.0, 0.0, 0.0, 0.0, -63.5, 127.0])  # scale 1: exact halves
    cases = [
        ("fp32", {"name": "fp32"}, {"a.weight": torch.randn(3, 5, generator=generator), "b": torch.randn(7)}),
        ("int8 ties, zeros, a short block", {"name": "int8", "block_size": 4}, {"t": ties}),
        ("int8 256", {"name": "int8", "block_size": 256}, {"w": torch.randn(3, 100, generator=generator) * 0.01}),
        # Values exactly halfway between two bf16 numbers round to the even one; subnormals and zeros too.
        (
            "bf16 ties",
            {"name": "bf16"},
            {"t": torch.tensor([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 1e-40, 0.0, -0.0, 3.0e38])},
        ),
        ("bf16", {"name": "bf16"}, {"w": torch.rand(4, 9, generator=generator) ** 6}),
    ]
    vectors = []
    for label, codec, tensors in cases:
        data = encode_update(tensors, CodecConfig.from_dict(codec))
        vectors.append(
            {
                "label": label,
                "codec": codec,
                "shard": list(tensors),
                "shapes": {n: list(t.shape) for n, t in tensors.items()},
                "tensors": {n: t.to(torch.float32).numpy().tobytes().hex() for n, t in tensors.items()},
                "hex": data.hex(),
            }
        )
    return vectors


def _checkpoint() -> dict[str, Any]:
    tensors = {"embed.weight": torch.randn(4, 3), "norm.weight": torch.ones(3)}
    return {
        "hex": save_weights(tensors).hex(),
        "tensors": {n: {"shape": list(t.shape), "hex": t.numpy().tobytes().hex()} for n, t in tensors.items()},
    }


def _deltas() -> dict[str, Any]:
    """A base checkpoint, deltas to a target in the codecs the page decodes, and what they rebuild."""
    gen = torch.Generator().manual_seed(7)
    base = {
        "wte.weight": torch.randn(33, 8, generator=gen),
        "norm.weight": torch.ones(8) * 1e8,
        "scale": torch.ones(()),
    }
    target = {n: t + torch.randn(t.shape, generator=gen) * 1e-2 for n, t in base.items()}
    out: dict[str, Any] = {"base": checkpoint_bytes(base).hex(), "deltas": []}
    frames = {}
    for codec in ("int8", "fp32", "int4", "int2", "sign1"):
        # Block size 5: blocks and packed bytes end apart, and tensors end inside a block and a byte.
        frame, rebuilt = make_delta(target, base, CodecConfig(codec, block_size=5))
        frames[codec] = frame
        out["deltas"].append({"codec": codec, "hex": frame.hex(), "result": checkpoint_bytes(rebuilt).hex()})
    wrong_shape = encode_update(
        {**{n: torch.zeros_like(t) for n, t in base.items()}, "scale": torch.zeros(2)}, CodecConfig("fp32")
    )
    missing = encode_update({"wte.weight": torch.zeros(33, 8)}, CodecConfig("int8"))
    # The frame's last byte holds the one-element "scale" tensor's code (the frame follows the base's order).
    assert list(base)[-1] == "scale"
    int4_code_0 = frames["int4"][:-1] + b"\x00"
    sign1_unused_bits = frames["sign1"][:-1] + bytes([frames["sign1"][-1] | 0x80])
    int2_unused_bits = frames["int2"][:-1] + bytes([frames["int2"][-1] | 0x10])
    malformed = [wrong_shape, missing, int4_code_0, sign1_unused_bits, int2_unused_bits]
    for bad in malformed:  # the reference refuses them too
        with pytest.raises(CheckpointFormatError):
            apply_delta(checkpoint_bytes(base), bad)
    out["broken"] = [
        wrong_shape.hex(),
        missing.hex(),
        encode_update(
            {n: t * 0 for n, t in target.items()}, CodecConfig("fp16")
        ).hex(),  # a codec the page doesn't decode
        int4_code_0.hex(),
        sign1_unused_bits.hex(),
        int2_unused_bits.hex(),
    ]
    return out


def _moments() -> dict[str, Any]:
    """Second moments, the reference's moments frame of them, and what it expands to; broken frames."""
    gen = torch.Generator().manual_seed(11)
    shapes = {"wte.weight": (7, 5), "norm.weight": (5,), "cube": (2, 3, 4)}
    v = {n: torch.rand(shape, generator=gen) ** 3 for n, shape in shapes.items()}
    factors = {n: factor(t) for n, t in v.items()}
    frame = encode_moments(as_records(factors))
    sent = from_records(decode_moments(frame, shapes), shapes)  # factors as bf16 rounds them
    negative = encode_moments(as_records({**factors, "norm.weight": (-torch.ones(5),)}))
    for bad in (negative, encode_update(as_records(factors), CodecConfig("int8"))):
        with pytest.raises(CodecError):  # the reference refuses them too
            decode_moments(bad, shapes)
    return {
        "shapes": {n: list(s) for n, s in shapes.items()},
        "v": {n: t.numpy().tobytes().hex() for n, t in v.items()},
        "hex": frame.hex(),
        "expanded": {n: expand(sent[n], shapes[n]).numpy().tobytes().hex() for n in shapes},
        "broken": [negative.hex(), encode_update(as_records(factors), CodecConfig("int8")).hex(), frame[:-1].hex()],
    }


def _recipe() -> dict[str, Any]:
    inner = InnerConfig(
        steps=3, batch_size=2, seq_len=4, grad_accum=2, lr=3e-3, warmup_steps=2, total_steps=10, unit_warmup_steps=2
    )
    ids = torch.randint(0, 60_000, (inner.tokens_needed + 5,), generator=torch.Generator().manual_seed(1))
    micro = unit_batches(ids.numpy(), inner)
    steps = []
    for s in range(inner.steps):
        batches = micro[s * inner.grad_accum : (s + 1) * inner.grad_accum]
        steps.append(
            {
                "inputs": torch.cat([x for x, _ in batches]).flatten().tolist(),
                "targets": torch.cat([y for _, y in batches]).flatten().tolist(),
            }
        )
    return {
        "recipe": dataclasses.asdict(inner) | {"global_step": 5},
        "rates": [[g, learning_rate(inner, g)] for g in range(13)],
        "unit_rates": [[i, unit_learning_rate(inner, 5, i)] for i in range(inner.steps)],
        "slice": ids.numpy().astype("<u2").tobytes().hex(),
        "dtype": "uint16",
        "steps": steps,
    }


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed (node --test runs the JavaScript tests)")
def test_the_browser_volunteers_javascript_matches_the_python_reference(tmp_path: Path) -> None:
    vectors = {
        "frames": _sent(),
        "received": _received(),
        "old_version_hex": msgpack.packb({"type": "welcome", "v": 1}).hex(),
        "updates": _updates(),
        "checkpoint": _checkpoint(),
        "deltas": _deltas(),
        "moments": _moments(),
        "recipe": _recipe(),
    }
    path = tmp_path / "vectors.json"
    path.write_text(json.dumps(vectors))
    assert NODE is not None
    run = subprocess.run(
        [NODE, "--test", "tests/js/"],
        cwd=REPO,
        env={"CW_VECTORS": str(path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "# pass 8" in run.stdout and "# fail 0" in run.stdout, run.stdout[-2000:]
