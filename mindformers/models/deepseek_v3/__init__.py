"""DeepSeek-V3: multi-head latent attention and a sigmoid-routed mixture of experts with shared experts."""
from ...registry import CONFIGS
from .config import DeepseekV3Config
from .modeling import DeepseekV3ForCausalLM, DeepseekV3ForSequenceClassification

CONFIGS.register(DeepseekV3Config, name=DeepseekV3Config.model_type)
