"""LoHa: low-rank Hadamard-product updates (PEFT's ``LoHaConfig``)."""
from ...registry import TUNERS
from ..lora import DEFAULT_TARGETS
from ..tuner_layer import TunerMethod
from .config import LoHaConfig
from .layer import FACTORS, LoHaLinear
from .model import inject_loha

# PEFT's TRANSFORMERS_MODELS_TO_LOHA_TARGET_MODULES_MAPPING is a copy of LoRA's
TUNERS.register(TunerMethod("LOHA", LoHaConfig, inject_loha, mergeable=True, slots=FACTORS, vector_slots=FACTORS,
                            default_targets=DEFAULT_TARGETS, pet_names=("loha",)), name="LOHA")
