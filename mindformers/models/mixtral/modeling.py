"""Mixtral: the shared decoder with a :class:`~mindformers.models.common.moe.SparseMoeBlock` in every layer."""
from ...registry import MODELS
from ..common.decoder import DecoderForCausalLM, DecoderForSequenceClassification
from .config import MixtralConfig


@MODELS.register
class MixtralForCausalLM(DecoderForCausalLM):
    config_class = MixtralConfig


@MODELS.register
class MixtralForSequenceClassification(DecoderForSequenceClassification):
    config_class = MixtralConfig
