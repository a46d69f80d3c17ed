"""LoKr: Kronecker-product updates (PEFT's ``LoKrConfig``)."""
from ...registry import TUNERS
from ..lora import DEFAULT_TARGETS
from ..tuner_layer import TunerMethod
from .config import LoKrConfig
from .layer import SLOTS, LoKrLinear
from .model import inject_lokr

# PEFT's TRANSFORMERS_MODELS_TO_LOKR_TARGET_MODULES_MAPPING is a copy of LoRA's
TUNERS.register(TunerMethod("LOKR", LoKrConfig, inject_lokr, mergeable=True, slots=SLOTS, vector_slots=SLOTS,
                            default_targets=DEFAULT_TARGETS, pet_names=("lokr",)), name="LOKR")
