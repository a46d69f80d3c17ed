"""Qwen3-MoE: Qwen3 with sparse mixture-of-experts feed-forward layers."""
from ...registry import CONFIGS
from .config import Qwen3MoeConfig
from .modeling import Qwen3MoeForCausalLM, Qwen3MoeForSequenceClassification

CONFIGS.register(Qwen3MoeConfig, name=Qwen3MoeConfig.model_type)
