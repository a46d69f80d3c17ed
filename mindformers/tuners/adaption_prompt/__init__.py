"""Adaption prompt: LLaMA-Adapter's zero-initialised gated prompt in the top attention layers (PEFT's
``AdaptionPromptConfig``)."""
from ...registry import TUNERS
from ..tuner_layer import TunerMethod
from .config import AdaptionPromptConfig
from .layer import SLOTS, AdaptedAttention
from .model import file_key, inject_adaption_prompt

TUNERS.register(TunerMethod("ADAPTION_PROMPT", AdaptionPromptConfig, inject_adaption_prompt, mergeable=False,
                            slots=SLOTS, file_key=file_key, pet_names=("adaption_prompt", "llama_adapter"),
                            merge_refusal="its gated prompt is attended to, not added to the weights"),
                name="ADAPTION_PROMPT")
