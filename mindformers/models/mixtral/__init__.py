"""Mixtral: Mistral with a sparse mixture of experts in every layer."""
from ...registry import CONFIGS
from .config import MixtralConfig
from .modeling import MixtralForCausalLM, MixtralForSequenceClassification

CONFIGS.register(MixtralConfig, name=MixtralConfig.model_type)
