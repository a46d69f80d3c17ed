"""Prefix tuning: trained keys and values before every input in every attention layer (PEFT's
``PrefixTuningConfig``; MindFormers' prefix tuning and P-Tuning v2)."""
from ...registry import TUNERS
from ..tuner_layer import TunerMethod
from .config import PrefixTuningConfig
from .layer import PrefixAttention, PrefixEncoder
from .model import export_prefix, file_key, inject_prefix_tuning

TUNERS.register(TunerMethod("PREFIX_TUNING", PrefixTuningConfig, inject_prefix_tuning, mergeable=False,
                            slots=("prefix_encoder",), file_key=file_key, export=export_prefix,
                            pet_names=("prefix_tuning", "prefixtuning", "ptuning2", "p_tuning_v2"),
                            merge_refusal="it prompts the attention layers, not the weights"), name="PREFIX_TUNING")
