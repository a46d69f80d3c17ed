"""Mistral: the Llama decoder with sliding-window attention."""
from ...registry import CONFIGS
from .config import MistralConfig
from .modeling import MistralForCausalLM, MistralForSequenceClassification

CONFIGS.register(MistralConfig, name=MistralConfig.model_type)
