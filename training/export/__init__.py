"""The trained model in the formats people use: Hugging Face transformers, llama.cpp's GGUF, ONNX.

    >>> write_hf(out, weights, config, tokenizer, card=record)     # AutoModelForCausalLM loads `out`
    >>> write_gguf(out / "model.gguf", weights, config, tokenizer, kind="q8_0")
    >>> write_onnx(out / "model.onnx", weights, config)            # logits, checked against torch

Every format is checked by the tool its users run (tests/training/export).
"""

from training.export.card import CampaignRecord, Contributor, LossPoint, render_card, write_card
from training.export.hf import write_hf
from training.export.llama import ExportError, from_llama_tensors, llama_config, llama_tensors

__all__ = [
    "CampaignRecord",
    "Contributor",
    "ExportError",
    "LossPoint",
    "from_llama_tensors",
    "llama_config",
    "llama_tensors",
    "render_card",
    "write_card",
    "write_hf",
]
