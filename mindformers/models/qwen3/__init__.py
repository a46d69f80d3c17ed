"""Qwen3: the Qwen2 decoder without q/k/v biases and with per-head q/k RMSNorm."""
from ...registry import CONFIGS
from .config import Qwen3Config
from .modeling import Qwen3ForCausalLM, Qwen3ForSequenceClassification

CONFIGS.register(Qwen3Config, name=Qwen3Config.model_type)
