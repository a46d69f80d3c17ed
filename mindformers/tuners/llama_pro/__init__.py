"""SWIFT's LLaMA-Pro: block expansion with zero-initialised output projections."""
from ...registry import TUNERS
from ..tuner_layer import TunerMethod
from .config import LLaMAProConfig
from .model import inject_llama_pro, owned_paths

TUNERS.register(TunerMethod("LLAMAPRO", LLaMAProConfig, inject_llama_pro, mergeable=True, pet_names=("llama_pro",),
                            peft_format=False, owned=owned_paths), name="LLAMAPRO")
