"""VeRA settings (Kopiczko et al. 2024, "VeRA: Vector-based Random Matrix Adaptation"), with PEFT's field names."""
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Union

from ..config import TunerConfig


@dataclass
class VeraConfig(TunerConfig):
    """One pair of frozen random projections shared by every adapted layer, and two trained vectors per layer:
    ``delta W = diag(lambda_b) B diag(lambda_d) A`` with A, B sliced to the layer's size."""

    peft_type: ClassVar[str] = "VERA"
    pet_aliases: ClassVar[Dict[str, str]] = {"vera_rank": "r", "rank": "r"}

    r: int = 256
    """Rank of the shared projections (higher than LoRA ranks: only r + out numbers train per layer)."""
    target_modules: Optional[Union[List[str], str]] = None
    """Module names to adapt (list of names or suffixes, a whole-name regex, or "all-linear"). None: the
    family's default (PEFT uses LoRA's table)."""
    projection_prng_key: int = 0
    """Seed of the shared projections, drawn as PEFT draws them (torch's CPU generator, Kaiming-uniform)."""
    save_projection: bool = True
    """Save vera_A / vera_B in the adapter file; False: they are rebuilt from projection_prng_key on loading."""
    vera_dropout: float = 0.0
    """Dropout on the layer input of the update, in training."""
    d_initial: float = 0.1
    """Initial value of every lambda_d entry (with init_weights)."""
    fan_in_fan_out: bool = False
    """The target stores its weight [in, out] (GPT-2's Conv1D); set automatically for those layers."""
    bias: str = "none"
    """Biases trained and saved with the adapter: "none", "all" or "vera_only" (the adapted layers')."""
    modules_to_save: Optional[List[str]] = None
    """Extra modules trained in full and saved with the adapter."""
    init_weights: bool = True
    """True: lambda_b zeros (the model starts unchanged) and lambda_d = d_initial; False: lambda_b ones and
    lambda_d standard normal."""
    layers_to_transform: Optional[Union[List[int], int]] = None
    """Only adapt these layer indices."""
    layers_pattern: Optional[Union[List[str], str]] = None
    """Name of the layer list holding the indices."""

    def __post_init__(self):
        if isinstance(self.target_modules, (set, tuple)):  # PEFT writes sets as lists; accept either
            self.target_modules = list(self.target_modules)
        if self.r <= 0:
            raise ValueError(f"VeraConfig.r must be a positive integer, found {self.r}")
        if self.bias not in ("none", "all", "vera_only"):
            raise ValueError(f"VeraConfig.bias must be 'none', 'all' or 'vera_only', found {self.bias!r}")
        if not 0.0 <= self.vera_dropout < 1.0:
            raise ValueError(f"VeraConfig.vera_dropout must be in [0, 1), found {self.vera_dropout}")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("VeraConfig.layers_pattern needs layers_to_transform (the indices to adapt)")
