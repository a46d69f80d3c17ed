"""Qwen3: the shared decoder with ``qk_norm`` attention (see models/common/attention.py)."""
from ...registry import MODELS
from ..common.decoder import DecoderForCausalLM, DecoderForSequenceClassification
from .config import Qwen3Config


@MODELS.register
class Qwen3ForCausalLM(DecoderForCausalLM):
    config_class = Qwen3Config


@MODELS.register
class Qwen3ForSequenceClassification(DecoderForSequenceClassification):
    config_class = Qwen3Config
