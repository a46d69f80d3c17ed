"""SWIFT's Side-Tuning (Zhang et al. 2019): a side MLP of a module's input, alpha-blended into its output."""
from ...registry import TUNERS
from ..tuner_layer import TunerMethod
from .config import SideConfig
from .model import inject_side

TUNERS.register(TunerMethod("SIDE", SideConfig, inject_side, mergeable=False, slots=("side_",), pet_names=("side",),
                            peft_format=False,
                            merge_refusal="the side network is a nonlinear MLP of the module's input blended with "
                                          "its output; it has no form in the weights"),
                name="SIDE")
