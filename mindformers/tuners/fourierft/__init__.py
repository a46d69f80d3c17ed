"""FourierFT: trained coefficients at seeded random frequencies, inverse-transformed into a weight update
(PEFT's ``FourierFTConfig``)."""
from ...registry import TUNERS
from ..lora import DEFAULT_TARGETS as LORA_TARGETS
from ..tuner_layer import TunerMethod
from .config import FourierFTConfig
from .layer import SPECTRUM, FourierFTLinear
from .model import inject_fourierft

__all__ = ["FourierFTConfig", "FourierFTLinear"]

# PEFT's TRANSFORMERS_MODELS_TO_FOURIERFT_TARGET_MODULES_MAPPING: LoRA's, but GPT-2's feed-forward output
DEFAULT_TARGETS = {**LORA_TARGETS, "gpt2": ("mlp.c_proj",)}

TUNERS.register(TunerMethod("FOURIERFT", FourierFTConfig, inject_fourierft, mergeable=True, slots=(SPECTRUM,),
                            vector_slots=(SPECTRUM,), default_targets=DEFAULT_TARGETS, pet_names=("fourierft",)),
                name="FOURIERFT")
