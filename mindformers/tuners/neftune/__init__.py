"""SWIFT's NEFTune: noisy embeddings while the model trains in full."""
from ...registry import TUNERS
from ..tuner_layer import TunerMethod
from .config import NEFTuneConfig
from .model import inject_neftune

TUNERS.register(TunerMethod("NEFTUNE", NEFTuneConfig, inject_neftune, mergeable=False, pet_names=("neftune",),
                            peft_format=False, trains_base=True, merge_refusal="it adds noise while training only"),
                name="NEFTUNE")
