"""VeRA: shared frozen random projections, per-layer trained scaling vectors (PEFT's ``VeraConfig``)."""
from ...registry import TUNERS
from ..lora import DEFAULT_TARGETS
from ..tuner_layer import TunerMethod
from .config import VeraConfig
from .layer import PROJECTIONS, VECTORS, VeraLinear
from .model import file_key, inject_vera

__all__ = ["VeraConfig", "VeraLinear"]

# PEFT's TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING is a copy of LoRA's (plus phi)
TUNERS.register(TunerMethod("VERA", VeraConfig, inject_vera, mergeable=True, slots=PROJECTIONS + VECTORS,
                            vector_slots=VECTORS, default_targets=DEFAULT_TARGETS, pet_names=("vera",),
                            file_key=file_key, frozen_slots=PROJECTIONS,
                            saves_frozen=lambda config: config.save_projection), name="VERA")
