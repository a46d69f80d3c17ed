"""P-tuning: virtual tokens computed by a trained prompt encoder (PEFT's ``PromptEncoderConfig``)."""
from ...registry import TUNERS
from ..tuner_layer import TunerMethod
from .config import PromptEncoderConfig
from .layer import PromptEncoder
from .model import export_prompt, inject_p_tuning

TUNERS.register(TunerMethod("P_TUNING", PromptEncoderConfig, inject_p_tuning, mergeable=False,
                            slots=("prompt_encoder",), pet_names=("p_tuning", "ptuning"), export=export_prompt,
                            merge_refusal="it adds inputs, not weights"), name="P_TUNING")
