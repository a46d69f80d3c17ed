"""LoRA and its variants (rsLoRA, DoRA, LoRA+ groups, weighted combinations)."""
from .config import LoraConfig, LoRAConfig
from .layer import LoraEmbedding, LoraLinear
from .plus import create_optimizer_param_groups
