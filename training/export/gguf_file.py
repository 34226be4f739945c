"""A GGUF file for llama.cpp (architecture `llama`), written with the `gguf` package.

    >>> write_gguf(path, weights, config, tokenizer, kind="q8_0", name="stdlib-tiny")

Kinds: `f32`, `f16` and `q8_0` (blocks of 32 weights with one fp16 scale; 1-D norm weights stay f32,
and a matrix whose rows are not a multiple of 32 stays f16, as llama.cpp's own converter does).
The tokenizer goes in as llama.cpp's `gpt2` byte-level BPE: its tokens, their kinds and merges.

llama.cpp's `llama` rotates adjacent pairs (x₀,x₁),(x₂,x₃)… of a head where we (and Hugging Face)
rotate (xᵢ, xᵢ₊d/2); so the q and k rows of each head are permuted as llama.cpp's
`convert_hf_to_gguf.py` permutes Llama's (`permute_rotary`), which makes both compute the same.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from training.data.tokenizer import Tokenizer
from training.export.llama import ExportError, llama_tensors
from training.export.tokenizer_files import tokenizer_json
from training.model import ModelConfig

__all__ = ["GGUF_KINDS", "GgufKind", "gguf_names", "permute_rotary", "write_gguf"]

GgufKind = Literal["f32", "f16", "q8_0"]
GGUF_KINDS: tuple[GgufKind, ...] = ("f32", "f16", "q8_0")
Q8_BLOCK = 32

_LAYER = {  # Llama's name after "model.layers.{i}." -> GGUF's after "blk.{i}."
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_names(config: ModelConfig) -> dict[str, str]:
    """Llama's tensor names -> GGUF's."""
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    for i in range(config.n_layer):
        names |= {f"model.layers.{i}.{ours}": f"blk.{i}.{theirs}" for ours, theirs in _LAYER.items()}
    return names


def permute_rotary(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder each head's rows from (first half, second half) pairs to adjacent pairs."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _tokenizer_fields(tokenizer: Tokenizer) -> tuple[list[str], list[int], list[str]]:
    """Tokens by id, their GGUF token types, and the merges as "a b" strings."""
    import gguf

    document: dict[str, Any] = json.loads(tokenizer_json(tokenizer))
    vocab: dict[str, int] = dict(document["model"]["vocab"])
    special: set[int] = set()
    for added in document.get("added_tokens", []):
        vocab[added["content"]] = int(added["id"])
        if added.get("special"):
            special.add(int(added["id"]))
    tokens = [""] * tokenizer.vocab_size
    for token, index in vocab.items():
        if not 0 <= index < len(tokens):
            raise ExportError(f"the tokenizer's token {token!r} has id {index} outside its vocabulary")
        tokens[index] = token
    if any(t == "" for t in tokens):
        raise ExportError("the tokenizer's vocabulary has gaps: some ids have no token")
    kinds = [int(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL) for i in range(len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in document["model"].get("merges", [])]
    return tokens, kinds, merges


def write_gguf(
    path: Path,
    weights: Mapping[str, torch.Tensor],
    config: ModelConfig,
    tokenizer: Tokenizer,
    *,
    kind: GgufKind = "f16",
    name: str = "commonweights",
    description: str = "",
    license: str = "",
) -> Path:
    try:
        import gguf
    except ImportError as error:
        raise ExportError("GGUF export needs the gguf package (pip install 'commonweights[export]')") from error
    if kind not in GGUF_KINDS:
        raise ExportError(f"unknown GGUF kind {kind!r}; choose one of {', '.join(GGUF_KINDS)}")
    if tokenizer.vocab_size != config.vocab_size:
        raise ExportError(f"the tokenizer has {tokenizer.vocab_size} tokens, the model {config.vocab_size}")
    tokens, kinds, merges = _tokenizer_fields(tokenizer)
    if not merges:  # llama.cpp's gpt2 vocabulary refuses a file without merges
        raise ExportError("GGUF needs a BPE tokenizer with merges; this campaign's is bytes: export hf or onnx")
    tensors = llama_tensors(weights, config)
    for i in range(config.n_layer):
        for part in ("q_proj", "k_proj"):
            key = f"model.layers.{i}.self_attn.{part}.weight"
            tensors[key] = permute_rotary(tensors[key], config.n_head)

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(name)
    if description:
        writer.add_description(description)
    if license:
        writer.add_license(license)
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}
    writer.add_file_type(file_types.get(kind, gguf.LlamaFileType.MOSTLY_Q8_0))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.d_model)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(config.d_ff)
    writer.add_head_count(config.n_head)
    writer.add_head_count_kv(config.n_head)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.norm_eps)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(kinds)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.eos_id)
    writer.add_eos_token_id(tokenizer.eos_id)
    writer.add_pad_token_id(tokenizer.eos_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)

    for llama_name, gguf_name in gguf_names(config).items():
        data = tensors[llama_name].numpy()
        if kind == "f32" or data.ndim == 1:
            writer.add_tensor(gguf_name, data.astype(np.float32))
        elif kind == "f16" or data.shape[-1] % Q8_BLOCK:
            writer.add_tensor(gguf_name, data.astype(np.float16))
        else:
            quantized = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gguf_name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
