"""LoHa settings (Hyeon-Woo et al. 2022, FedPara; LyCORIS), with PEFT's field names."""
from dataclasses import dataclass, field
from typing import ClassVar, Dict, List, Optional, Union

from ..config import TunerConfig


@dataclass
class LoHaConfig(TunerConfig):
    """Low-rank Hadamard product: ``W x + ((A1 B1) * (A2 B2)) x * alpha / r`` on chosen linear layers."""

    peft_type: ClassVar[str] = "LOHA"
    inert_fields: ClassVar[Dict[str, tuple]] = {"use_effective_conv2d": (False, True)}  # convolutions only
    pet_aliases: ClassVar[Dict[str, str]] = {"loha_rank": "r", "rank": "r", "loha_alpha": "alpha"}

    r: int = 8
    """Rank of each of the two factorised matrices."""
    alpha: float = 8
    """Scale numerator: the update is multiplied by alpha / r."""
    rank_dropout: float = 0.0
    """Dropout of update rows in training (only 0 is supported here)."""
    module_dropout: float = 0.0
    """Probability of skipping the whole update in a training step (only 0 is supported here)."""
    target_modules: Optional[Union[List[str], str]] = None
    """Module names to adapt (as LoRA's); None: the family's default (PEFT uses LoRA's table)."""
    exclude_modules: Optional[Union[List[str], str]] = None
    """Modules never adapted."""
    init_weights: bool = True
    """True: A1, B1, A2 Kaiming-uniform and B2 zero (the update starts at 0); False: all random."""
    layers_to_transform: Optional[Union[List[int], int]] = None
    """Only adapt these layer indices."""
    layers_pattern: Optional[Union[List[str], str]] = None
    """Name of the layer list holding the indices."""
    rank_pattern: Dict[str, int] = field(default_factory=dict)
    """Per-module ranks: {regex: r}, matched as (.*\\.)?KEY$."""
    alpha_pattern: Dict[str, float] = field(default_factory=dict)
    """Per-module alphas, matched like rank_pattern."""
    modules_to_save: Optional[List[str]] = None
    """Extra modules trained in full and saved with the adapter."""

    def __post_init__(self):
        if isinstance(self.target_modules, (set, tuple)):  # PEFT writes sets as lists; accept either
            self.target_modules = list(self.target_modules)
        for name in ("rank_dropout", "module_dropout"):
            if getattr(self, name):
                raise ValueError(f"LoHaConfig.{name} {getattr(self, name)} is not supported (only 0.0)")
        if self.r <= 0:
            raise ValueError(f"LoHaConfig.r must be a positive integer, found {self.r}")
