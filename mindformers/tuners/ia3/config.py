"""IA3 settings (Liu et al. 2022, "(IA)^3"), with PEFT's field names."""
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Union

from ..config import TunerConfig


@dataclass
class IA3Config(TunerConfig):
    """Learned vectors that rescale activations: the output of attention projections, the input of
    feed-forward ones. Trains and saves one vector per adapted layer."""

    peft_type: ClassVar[str] = "IA3"
    inert_fields: ClassVar[Dict[str, tuple]] = {}

    target_modules: Optional[Union[List[str], str]] = None
    """Module names to adapt (list of names or suffixes, a whole-name regex, or "all-linear"). None: the
    family's default (PEFT's table: k/v projections and the feed-forward output)."""
    exclude_modules: Optional[Union[List[str], str]] = None
    """Modules never adapted, matched like target_modules."""
    feedforward_modules: Optional[Union[List[str], str]] = None
    """Targets whose input is scaled instead of their output (a subset of target_modules; None: the
    family's default when target_modules is None too)."""
    fan_in_fan_out: bool = False
    """The target stores its weight [in, out] (GPT-2's Conv1D); set automatically for those layers."""
    modules_to_save: Optional[List[str]] = None
    """Extra modules trained in full and saved with the adapter."""
    init_ia3_weights: bool = True
    """True: vectors start at 1 (the model is unchanged); False: random (PEFT: standard normal)."""
