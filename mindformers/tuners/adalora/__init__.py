"""AdaLoRA: SVD-shaped LoRA whose ranks are allocated during training (PEFT's ``AdaLoraConfig``)."""
from ...registry import TUNERS
from ..tuner_layer import TunerMethod
from .allocator import RankAllocator
from .config import AdaLoraConfig
from .layer import SLOTS, SVDLinear
from .model import (checkpoint_state, export_adalora, file_key, inject_adalora, orth_regulariser, restore_state,
                    update_and_allocate)

__all__ = ["AdaLoraConfig", "RankAllocator", "SVDLinear", "update_and_allocate"]

# PEFT 0.21's TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING for our families it lists
DEFAULT_TARGETS = {**{family: ("q_proj", "v_proj") for family in ("llama", "qwen2", "qwen3")}, "gpt2": ("c_attn",)}

TUNERS.register(TunerMethod(
    "ADALORA", AdaLoraConfig, inject_adalora, mergeable=True, slots=SLOTS, default_targets=DEFAULT_TARGETS,
    pet_names=("adalora",), file_key=file_key, export=export_adalora, regulariser=orth_regulariser,
    after_step=update_and_allocate, checkpoint_state=checkpoint_state, restore_state=restore_state), name="ADALORA")
