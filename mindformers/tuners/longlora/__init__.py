"""SWIFT's LongLoRA: LoRA, trainable embeddings and norms, and shifted sparse attention while training."""
from ...registry import TUNERS
from ..tuner_layer import TunerMethod
from .config import LongLoRAConfig
from .layer import ShiftedSparseAttention, s2_groups
from .model import inject_longlora, owned_paths

TUNERS.register(TunerMethod("LONGLORA", LongLoRAConfig, inject_longlora, mergeable=True, pet_names=("longlora",),
                            peft_format=False, owned=owned_paths), name="LONGLORA")
