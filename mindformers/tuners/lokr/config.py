"""LoKr settings (Kronecker-product updates, LyCORIS), with PEFT's field names (``LoKrConfig``)."""
from dataclasses import dataclass, field
from typing import ClassVar, Dict, List, Optional, Union

from ..config import TunerConfig


@dataclass
class LoKrConfig(TunerConfig):
    """``W x + kron(W1, W2) x * alpha / r`` on chosen linear layers, W1 / W2 full or rank-r factorised."""

    peft_type: ClassVar[str] = "LOKR"
    inert_fields: ClassVar[Dict[str, tuple]] = {"use_effective_conv2d": (False, True)}  # convolutions only
    pet_aliases: ClassVar[Dict[str, str]] = {"lokr_rank": "r", "rank": "r", "lokr_alpha": "alpha"}

    r: int = 8
    """Rank of the factorised Kronecker factors."""
    alpha: float = 8
    """Scale numerator: the update is multiplied by alpha / r."""
    rank_dropout: float = 0.0
    """Dropout of update rows in training (only 0 is supported here)."""
    module_dropout: float = 0.0
    """Probability of skipping the update in a training step (only 0 is supported here)."""
    decompose_both: bool = False
    """Factorise the left factor W1 too (when r is small enough)."""
    decompose_factor: int = -1
    """Kronecker decomposition factor (-1: near the square root of each dimension)."""
    rank_dropout_scale: bool = False
    """Rescale rank dropout (no effect without rank dropout)."""
    target_modules: Optional[Union[List[str], str]] = None
    """Module names to adapt (as LoRA's); None: the family's default (PEFT uses LoRA's table)."""
    exclude_modules: Optional[Union[List[str], str]] = None
    """Modules never adapted."""
    init_weights: Union[bool, str] = True
    """True: W1 zero (the update starts at 0); "lycoris": W2 zero; False: all random."""
    layers_to_transform: Optional[Union[List[int], int]] = None
    """Only adapt these layer indices."""
    layers_pattern: Optional[Union[List[str], str]] = None
    """Name of the layer list holding the indices."""
    rank_pattern: Dict[str, int] = field(default_factory=dict)
    """Per-module ranks: {regex: r}."""
    alpha_pattern: Dict[str, float] = field(default_factory=dict)
    """Per-module alphas."""
    modules_to_save: Optional[List[str]] = None
    """Extra modules trained in full and saved with the adapter."""

    def __post_init__(self):
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = list(self.target_modules)
        for name in ("rank_dropout", "module_dropout"):
            if getattr(self, name):
                raise ValueError(f"LoKrConfig.{name} {getattr(self, name)} is not supported (only 0.0)")
        if self.init_weights not in (True, False, "lycoris"):
            raise ValueError(f"LoKrConfig.init_weights must be True, False or 'lycoris', found {self.init_weights!r}")
        if self.r <= 0:
            raise ValueError(f"LoKrConfig.r must be a positive integer, found {self.r}")
