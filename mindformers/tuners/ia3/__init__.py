"""IA3: learned rescaling vectors (Liu et al. 2022), PEFT's ``IA3Config``."""
from ...registry import TUNERS
from ..tuner_layer import TunerMethod
from .config import IA3Config
from .layer import IA3Linear
from .model import DEFAULT_TARGETS, inject_ia3

TUNERS.register(TunerMethod("IA3", IA3Config, inject_ia3, mergeable=True, slots=("ia3_l",), vector_slots=("ia3_l",),
                            default_targets=DEFAULT_TARGETS, pet_names=("ia3",)), name="IA3")
