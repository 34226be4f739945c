"""Each export, checked by the tool its users run: transformers loads the Hugging Face folder and
computes our logits, onnxruntime runs the ONNX model to the same logits, and gguf's own reader reads
back the GGUF tensors — which a forward pass written from llama.cpp's conventions (adjacent-pair
rotary embeddings) turns into our logits again. llama.cpp itself is not run: no packaged build is
installable here (PyPI's llama-cpp-python is a source package that compiles llama.cpp)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training.export.conftest import Trained
from training.data.tokenizer import ByteTokenizer
from training.export import ExportError, from_llama_tensors, llama_tensors, write_hf
from training.export.gguf_file import gguf_names, permute_rotary, write_gguf
from training.generate import generate
from training.model import build_model, preset

LOGITS_TOLERANCE = 1e-4  # the bound, fp32


def _ids(trained: Trained, n: int = 256) -> list[int]:
    ids = trained.tokenizer.encode(trained.text)[:n]
    assert len(ids) == n, "the holdout text is long enough"
    return ids


def test_llama_names_keep_every_value_and_come_back(trained: Trained) -> None:
    tensors = llama_tensors(trained.weights, trained.config)
    assert "model.layers.0.self_attn.q_proj.weight" in tensors and "lm_head.weight" not in tensors
    back = from_llama_tensors(tensors, trained.config)
    assert set(back) == set(trained.weights)
    assert all(torch.equal(back[name], trained.weights[name]) for name in back)


def test_weights_of_another_shape_are_refused_with_the_reason(trained: Trained) -> None:
    other = preset("tiny", vocab_size=trained.config.vocab_size + 1)
    with pytest.raises(ExportError, match=r"embed\.weight has shape"):
        llama_tensors(trained.weights, other)
    with pytest.raises(ExportError, match="missing"):
        llama_tensors({k: v for k, v in trained.weights.items() if k != "norm.weight"}, trained.config)


def test_transformers_loads_the_folder_and_computes_our_logits_and_greedy_text(
    trained: Trained, tmp_path: Path
) -> None:
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (the dev extra has it)")
    written = write_hf(tmp_path, trained.weights, trained.config, trained.tokenizer)
    assert {p.name for p in written} >= {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"}
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert "auto_map" not in (tmp_path / "config.json").read_text(), "no custom code"
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ids = _ids(trained)
    assert tokenizer(trained.text).input_ids[:256] == ids, "AutoTokenizer gives our token ids"
    assert tokenizer.decode(ids) == trained.tokenizer.decode(ids)

    batch = torch.tensor([ids, ids[::-1]])
    with torch.no_grad():
        ours, theirs = trained.model(batch), hf(batch).logits
    assert float((ours - theirs).abs().max()) <= LOGITS_TOLERANCE

    prompt = trained.text[:120]
    expected = generate(trained.model, trained.tokenizer, prompt, max_new_tokens=20)
    assert len(expected.ids) == 20, "no end-of-document within 20 tokens of this prompt"
    start = torch.tensor([trained.tokenizer.encode(prompt)])
    with torch.no_grad():
        out = hf.generate(start, max_new_tokens=20, do_sample=False, eos_token_id=None)
    assert out[0, start.shape[1] :].tolist() == expected.ids


def test_a_byte_tokenizer_becomes_a_tokenizer_json_with_the_same_ids(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (the dev extra has it)")
    tokenizer = ByteTokenizer()
    config = preset("tiny", vocab_size=tokenizer.vocab_size)
    model = build_model(config, seed=1)
    write_hf(tmp_path, dict(model.named_parameters()), config, tokenizer)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "naïve café — 東京 ✓\n\tdef f(x): return x ** 2"
    assert theirs(text).input_ids == tokenizer.encode(text)
    assert theirs.decode(tokenizer.encode(text)) == text
    assert theirs.eos_token_id == tokenizer.eos_id


def test_gguf_needs_a_bpe_tokenizer_and_says_so(tmp_path: Path) -> None:
    pytest.importorskip("gguf", reason="gguf is not installed (the export extra has it)")
    tokenizer = ByteTokenizer()
    config = preset("tiny", vocab_size=tokenizer.vocab_size)
    weights = dict(build_model(config, seed=1).named_parameters())
    with pytest.raises(ExportError, match="needs a BPE tokenizer"):
        write_gguf(tmp_path / "m.gguf", weights, config, tokenizer)
    assert not (tmp_path / "m.gguf").exists()


def test_onnxruntime_runs_the_onnx_model_to_our_logits(trained: Trained, tmp_path: Path) -> None:
    pytest.importorskip("onnxscript", reason="onnx export needs the onnx extra")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from training.export.onnx_logits import write_onnx

    path = write_onnx(tmp_path / "model.onnx", trained.weights, trained.config)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    ids = _ids(trained)
    for batch in (torch.tensor([ids]), torch.tensor([ids[:37], ids[50:87], ids[200:237]])):
        (theirs,) = session.run(["logits"], {"input_ids": batch.numpy()})
        with torch.no_grad():
            ours = trained.model(batch)
        assert theirs.shape == tuple(ours.shape)
        assert float(np.abs(theirs - ours.numpy()).max()) <= LOGITS_TOLERANCE


def _read_gguf(path: Path) -> tuple[dict[str, np.ndarray], dict[str, object], dict[str, str]]:
    gguf = pytest.importorskip("gguf", reason="gguf is not installed (the export extra has it)")
    reader = gguf.GGUFReader(path)
    tensors, kinds = {}, {}
    for tensor in reader.tensors:
        data = np.asarray(tensor.data)
        if tensor.tensor_type == gguf.GGMLQuantizationType.Q8_0:
            data = gguf.quants.dequantize(data, tensor.tensor_type)
        tensors[tensor.name] = data.astype(np.float32).reshape([int(n) for n in reversed(tensor.shape)])
        kinds[tensor.name] = tensor.tensor_type.name
    fields: dict[str, object] = {}
    for name, field in reader.fields.items():
        if name.startswith(("llama.", "general.", "tokenizer.ggml.")):
            fields[name] = field.contents()
    return tensors, fields, kinds


def _rms(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def _llama_cpp_logits(tensors: dict[str, np.ndarray], fields: dict[str, object], ids: list[int], *,
                      adjacent_pairs: bool = True) -> np.ndarray:  # fmt: skip
    """The `llama` architecture's forward pass as llama.cpp defines it, from GGUF tensors and keys:
    rotary embeddings over adjacent pairs (llama.cpp's "normal" RoPE), float64 throughout."""
    heads = int(fields["llama.attention.head_count"])  # type: ignore[call-overload]
    eps = float(fields["llama.attention.layer_norm_rms_epsilon"])  # type: ignore[arg-type]
    base = float(fields["llama.rope.freq_base"])  # type: ignore[arg-type]
    t = {k: v.astype(np.float64) for k, v in tensors.items()}
    x = t["token_embd.weight"][ids]
    seq, width = x.shape
    dim = width // heads
    angles = np.arange(seq)[:, None] * base ** (-np.arange(0, dim, 2) / dim)[None, :]  # (seq, dim/2)
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]

    def rope(m: np.ndarray) -> np.ndarray:  # (seq, heads, dim)
        a, b = (m[..., 0::2], m[..., 1::2]) if adjacent_pairs else (m[..., : dim // 2], m[..., dim // 2 :])
        out = np.empty_like(m)
        ra, rb = a * cos - b * sin, a * sin + b * cos
        if adjacent_pairs:
            out[..., 0::2], out[..., 1::2] = ra, rb
        else:
            out[..., : dim // 2], out[..., dim // 2 :] = ra, rb
        return out

    mask = np.triu(np.full((seq, seq), -np.inf), 1)
    for i in range(int(fields["llama.block_count"])):  # type: ignore[call-overload]
        p = f"blk.{i}."
        h = _rms(x, t[p + "attn_norm.weight"], eps)
        q, k, v = ((h @ t[p + f"attn_{n}.weight"].T).reshape(seq, heads, dim) for n in "qkv")
        q, k = rope(q), rope(k)
        scores = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(dim) + mask
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        x = x + np.einsum("hqk,khd->qhd", weights, v).reshape(seq, width) @ t[p + "attn_output.weight"].T
        h = _rms(x, t[p + "ffn_norm.weight"], eps)
        gate = h @ t[p + "ffn_gate.weight"].T
        x = x + ((gate / (1 + np.exp(-gate))) * (h @ t[p + "ffn_up.weight"].T)) @ t[p + "ffn_down.weight"].T
    result: np.ndarray = _rms(x, t["output_norm.weight"], eps) @ t["token_embd.weight"].T
    return result


def test_the_gguf_file_reads_back_with_ggufs_reader_and_computes_our_logits_the_llama_cpp_way(
    trained: Trained, tmp_path: Path
) -> None:
    pytest.importorskip("gguf", reason="gguf is not installed (the export extra has it)")
    path = write_gguf(tmp_path / "m-f32.gguf", trained.weights, trained.config, trained.tokenizer, kind="f32")
    tensors, fields, kinds = _read_gguf(path)
    c = trained.config
    assert fields["general.architecture"] == "llama" and fields["llama.block_count"] == c.n_layer
    assert fields["llama.embedding_length"] == c.d_model and fields["llama.context_length"] == c.max_seq_len
    assert fields["llama.attention.head_count"] == c.n_head and fields["llama.feed_forward_length"] == c.d_ff
    assert (
        fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.eos_token_id"] == trained.tokenizer.eos_id
    )
    tokens = fields["tokenizer.ggml.tokens"]
    assert isinstance(tokens, list) and len(tokens) == c.vocab_size
    assert set(kinds.values()) == {"F32"}

    source = llama_tensors(trained.weights, c)
    names = gguf_names(c)
    assert set(tensors) == set(names.values())
    for llama, ours in names.items():
        expected = source[llama]
        if llama.endswith(("q_proj.weight", "k_proj.weight")):
            expected = permute_rotary(expected, c.n_head)
        assert np.array_equal(tensors[ours], expected.numpy()), ours

    ids = _ids(trained, 96)
    with torch.no_grad():
        ours_logits = trained.model(torch.tensor([ids]))[0].double().numpy()
    assert np.abs(_llama_cpp_logits(tensors, fields, ids) - ours_logits).max() <= LOGITS_TOLERANCE
    # The permutation is what makes llama.cpp's rotation ours: without it the numbers differ.
    unpermuted = dict(tensors)
    for i in range(c.n_layer):
        for part in ("q_proj", "k_proj"):
            unpermuted[names[f"model.layers.{i}.self_attn.{part}.weight"]] = source[
                f"model.layers.{i}.self_attn.{part}.weight"
            ].numpy()
    assert np.abs(_llama_cpp_logits(unpermuted, fields, ids) - ours_logits).max() > 1e-2


@pytest.mark.parametrize("kind", ["f16", "q8_0"])
def test_smaller_gguf_kinds_hold_the_weights_within_their_rounding(trained: Trained, tmp_path: Path, kind: str) -> None:
    pytest.importorskip("gguf", reason="gguf is not installed (the export extra has it)")
    path = write_gguf(tmp_path / f"m-{kind}.gguf", trained.weights, trained.config, trained.tokenizer, kind=kind)  # type: ignore[arg-type]
    tensors, fields, kinds = _read_gguf(path)
    source = llama_tensors(trained.weights, trained.config)
    for llama, ours in gguf_names(trained.config).items():
        expected = source[llama]
        if llama.endswith(("q_proj.weight", "k_proj.weight")):
            expected = permute_rotary(expected, trained.config.n_head)
        want = expected.numpy()
        if want.ndim == 1:
            assert kinds[ours] == "F32" and np.array_equal(tensors[ours], want), ours
        elif kind == "f16":
            assert kinds[ours] == "F16" and np.array_equal(tensors[ours], want.astype(np.float16).astype(np.float32))
        else:  # Q8_0: blocks of 32 with a scale of max|w|/127 kept in fp16: within half a step and its rounding
            assert kinds[ours] == "Q8_0"
            blocks = np.abs(want).reshape(-1, 32).max(axis=1, keepdims=True) / 127
            error = np.abs(tensors[ours] - want).reshape(-1, 32)
            assert (error <= blocks * 0.6).all(), ours
    ids = _ids(trained, 64)
    with torch.no_grad():
        ours_logits = trained.model(torch.tensor([ids]))[0].double().numpy()
    theirs = _llama_cpp_logits(tensors, fields, ids)
    agree = float((theirs.argmax(-1) == ours_logits.argmax(-1)).mean())
    assert agree >= 0.9, f"{kind}: the next-token choice agrees on only {agree:.0%} of positions"
    f32_bytes = 4 * sum(t.numel() for t in source.values())
    assert path.stat().st_size < f32_bytes * (0.55 if kind == "f16" else 0.35)
