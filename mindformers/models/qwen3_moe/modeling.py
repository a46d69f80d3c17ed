"""Qwen3-MoE: the shared decoder with q/k-norm attention and per-layer sparse or dense MLPs."""
from ...registry import MODELS
from ..common.decoder import DecoderForCausalLM, DecoderForSequenceClassification
from .config import Qwen3MoeConfig


@MODELS.register
class Qwen3MoeForCausalLM(DecoderForCausalLM):
    config_class = Qwen3MoeConfig


@MODELS.register
class Qwen3MoeForSequenceClassification(DecoderForSequenceClassification):
    config_class = Qwen3MoeConfig
