"""Our decoder as the Llama architecture: its config and its tensor names.

The model (training/model.py) is a Llama decoder in all but names: RMSNorm before attention and MLP,
rotary embeddings over (first half, second half) pairs as Hugging Face's `rotate_half` does, SwiGLU
with gate/up/down, no biases, tied input and output embeddings. Only the attention's fused `qkv`
matrix splits into Llama's q/k/v, row-wise, so every weight keeps its values.

    >>> tensors = llama_tensors(weights, config)       # "model.layers.0.self_attn.q_proj.weight": …
    >>> llama_config(config, eos_id=0)["architectures"]
    ['LlamaForCausalLM']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from training.model import ModelConfig

__all__ = ["ExportError", "from_llama_tensors", "llama_config", "llama_tensors"]


class ExportError(ValueError):
    """A model or its records that cannot be exported; the message says why."""

    code = "export_failed"


def llama_config(config: ModelConfig, *, eos_id: int, torch_dtype: str = "float32") -> dict[str, Any]:
    """`config.json` of a LlamaForCausalLM with our shapes: no custom code."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_head,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "torch_dtype": torch_dtype,
    }


_BLOCK = {  # ours (after "blocks.{i}.") -> Llama's (after "model.layers.{i}.")
    "attn_norm.weight": "input_layernorm.weight",
    "attn.proj.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate.weight": "mlp.gate_proj.weight",
    "mlp.up.weight": "mlp.up_proj.weight",
    "mlp.down.weight": "mlp.down_proj.weight",
}
_QKV = ("q_proj", "k_proj", "v_proj")


def _expected(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    d, f = config.d_model, config.d_ff
    shapes: dict[str, tuple[int, ...]] = {"embed.weight": (config.vocab_size, d), "norm.weight": (d,)}
    for i in range(config.n_layer):
        shapes |= {
            f"blocks.{i}.attn_norm.weight": (d,),
            f"blocks.{i}.attn.qkv.weight": (3 * d, d),
            f"blocks.{i}.attn.proj.weight": (d, d),
            f"blocks.{i}.mlp_norm.weight": (d,),
            f"blocks.{i}.mlp.gate.weight": (f, d),
            f"blocks.{i}.mlp.up.weight": (f, d),
            f"blocks.{i}.mlp.down.weight": (d, f),
        }
    return shapes


def llama_tensors(weights: Mapping[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our weights under Llama's names (fp32, contiguous); ExportError unless they are exactly the
    model `config` describes."""
    expected = _expected(config)
    if set(weights) != set(expected):
        missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
        raise ExportError(f"the checkpoint is not this model: missing {missing[:3]}, unexpected {extra[:3]}")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise ExportError(f"{name} has shape {tuple(weights[name].shape)}; the model config says {shape}")
    out = {
        "model.embed_tokens.weight": weights["embed.weight"],
        "model.norm.weight": weights["norm.weight"],
    }
    for i in range(config.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        for name, llama in _BLOCK.items():
            out[theirs + llama] = weights[ours + name]
        qkv = weights[ours + "attn.qkv.weight"]
        for part, tensor in zip(_QKV, torch.split(qkv, config.d_model), strict=True):
            out[f"{theirs}self_attn.{part}.weight"] = tensor
    return {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in out.items()}


def from_llama_tensors(tensors: Mapping[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """The inverse of `llama_tensors`: Llama's names back to ours."""
    out = {"embed.weight": tensors["model.embed_tokens.weight"], "norm.weight": tensors["model.norm.weight"]}
    for i in range(config.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        for name, llama in _BLOCK.items():
            out[ours + name] = tensors[theirs + llama]
        out[ours + "attn.qkv.weight"] = torch.cat([tensors[f"{theirs}self_attn.{p}.weight"] for p in _QKV])
    return out
