"""GPT-2."""
from ...registry import CONFIGS
from .config import GPT2Config
from .modeling import GPT2ForSequenceClassification, GPT2LMHeadModel, GPT2Model

CONFIGS.register(GPT2Config, name=GPT2Config.model_type)
