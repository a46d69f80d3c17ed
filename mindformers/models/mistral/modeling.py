"""Mistral: the shared decoder; ``layer_type`` makes every layer a sliding-window one."""
from ...registry import MODELS
from ..common.decoder import DecoderForCausalLM, DecoderForSequenceClassification
from .config import MistralConfig


@MODELS.register
class MistralForCausalLM(DecoderForCausalLM):
    config_class = MistralConfig


@MODELS.register
class MistralForSequenceClassification(DecoderForSequenceClassification):
    config_class = MistralConfig
