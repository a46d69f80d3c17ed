"""LoRA and its variants (rsLoRA, DoRA, LoRA+ groups, weighted combinations)."""
from ...registry import TUNERS
from ..tuner_layer import TunerMethod
from .config import LoraConfig, LoRAConfig
from .layer import LoraEmbedding, LoraLinear
from .model import inject_lora
from .plus import create_optimizer_param_groups

# PEFT 0.21's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING for the families it lists; DeepSeek-V3 and
# PanguAlpha (not listed there): their query and value projections
DEFAULT_TARGETS = {
    **{family: ("q_proj", "v_proj") for family in ("llama", "qwen2", "qwen3", "mistral", "mixtral", "qwen3_moe")},
    "gpt2": ("c_attn",),
    "deepseek_v3": ("q_b_proj", "kv_b_proj"),
    "pangualpha": ("dense1", "dense3"),
}

TUNERS.register(TunerMethod(
    "LORA", LoraConfig, inject_lora, mergeable=True, swift_config_class=LoRAConfig,
    slots=("lora_A", "lora_B", "lora_magnitude_vector", "lora_embedding_A", "lora_embedding_B"),
    vector_slots=("lora_magnitude_vector", "lora_embedding_A", "lora_embedding_B"),
    default_targets=DEFAULT_TARGETS, pet_names=("lora",)), name="LORA")
