"""Llama (Touvron et al. 2023) and the models that share its shape (Llama 3, SmolLM2, Qwen2).

Architecture choices (all from models/common/decoder.py; Llama is the decoder with its default parts):
- pre-norm blocks with RMSNorm: ``h = x + attn(norm(x)); out = h + mlp(norm(h))``
- rotary position embeddings in the "rotate half" layout, optional linear / llama3 / yarn frequency scaling
- grouped-query attention: ``num_key_value_heads`` key/value heads shared by groups of query heads
- SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``
- optional biases on q/k/v (Qwen2) or on all attention projections; optional tied output embedding
"""
from ...registry import MODELS
from ..common.decoder import (
    DecoderForCausalLM,
    DecoderForFeatureExtraction,
    DecoderForQuestionAnswering,
    DecoderForSequenceClassification,
    DecoderForTokenClassification,
)
from .config import LlamaConfig, Qwen2Config


@MODELS.register
class LlamaModel(DecoderForFeatureExtraction):
    """The bare Llama backbone (``embed_tokens``, ``layers``, ``norm``): ids -> final hidden states."""

    config_class = LlamaConfig


@MODELS.register
class LlamaForCausalLM(DecoderForCausalLM):
    """Llama with a language-model head (see :class:`DecoderForCausalLM`)."""

    config_class = LlamaConfig


@MODELS.register
class LlamaForSequenceClassification(DecoderForSequenceClassification):
    """Llama with a ``score`` head on the last non-padding token."""

    config_class = LlamaConfig


@MODELS.register
class LlamaForTokenClassification(DecoderForTokenClassification):
    """Llama with dropout and a ``score`` head (with bias) on every position."""

    config_class = LlamaConfig


@MODELS.register
class LlamaForQuestionAnswering(DecoderForQuestionAnswering):
    """Llama with a ``qa_outputs`` span head; its backbone is ``transformer`` as in transformers (kept there
    for backward compatibility), so checkpoint and PEFT keys read ``transformer.layers...``."""

    config_class = LlamaConfig
    base_model_prefix = "transformer"


@MODELS.register
class Qwen2ForCausalLM(DecoderForCausalLM):
    """Qwen2: the Llama decoder with q/k/v biases (and optional sliding windows)."""

    config_class = Qwen2Config


@MODELS.register
class Qwen2ForSequenceClassification(DecoderForSequenceClassification):
    config_class = Qwen2Config
