"""LoRA and its variants (rsLoRA, DoRA, LoRA+ groups, weighted combinations)."""
from ...registry import TUNERS
from ..tuner_layer import TunerMethod
from .config import LoraConfig, LoRAConfig
from .layer import LoraEmbedding, LoraLinear
from .model import inject_lora
from .plus import create_optimizer_param_groups

TUNERS.register(TunerMethod("LORA", LoraConfig, inject_lora, mergeable=True, swift_config_class=LoRAConfig),
                name="LORA")
