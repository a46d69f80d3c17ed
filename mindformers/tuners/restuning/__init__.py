"""SWIFT's Res-Tuning-Bypass (Jiang et al. 2023): tuners on detached hidden states, chained beside the backbone."""
from ...registry import TUNERS
from ..tuner_layer import TunerMethod
from .config import ResTuningConfig
from .model import inject_restuning

TUNERS.register(TunerMethod("RESTUNING", ResTuningConfig, inject_restuning, mergeable=False, slots=("restuning_",),
                            pet_names=("restuning", "restuner"), peft_format=False,
                            merge_refusal="the bypass runs nonlinear tuners on detached hidden states and replaces "
                                          "the target's input; it has no form in the weights"),
                name="RESTUNING")
