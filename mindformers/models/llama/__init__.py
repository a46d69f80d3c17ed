"""The Llama family: Llama 2/3, SmolLM2 and Qwen2-style checkpoints."""
from ...registry import CONFIGS
from .config import LlamaConfig, Qwen2Config
from .modeling import (
    LlamaForCausalLM,
    LlamaForQuestionAnswering,
    LlamaForSequenceClassification,
    LlamaForTokenClassification,
    LlamaModel,
    Qwen2ForCausalLM,
    Qwen2ForSequenceClassification,
)

CONFIGS.register(LlamaConfig, name=LlamaConfig.model_type)
CONFIGS.register(Qwen2Config, name=Qwen2Config.model_type)
