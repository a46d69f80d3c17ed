"""FourierFT settings (Gao et al. 2024, "Parameter-Efficient Fine-Tuning with Discrete Fourier Transform"), with
PEFT's field names."""
from dataclasses import dataclass, field
from typing import ClassVar, Dict, List, Optional, Union

from ..config import TunerConfig


@dataclass
class FourierFTConfig(TunerConfig):
    """A few trained spectral coefficients per layer at random (seeded) frequencies:
    ``delta W = Re(ifft2(S)) * scaling`` with S [out, in] zero except at those frequencies."""

    peft_type: ClassVar[str] = "FOURIERFT"
    pet_aliases: ClassVar[Dict[str, str]] = {"fourierft_n_frequency": "n_frequency"}

    n_frequency: int = 1000
    """Trained coefficients per layer (at most out * in)."""
    scaling: float = 150.0
    """Multiplies the inverse transform (as LoRA's alpha; the paper uses 100-300)."""
    random_loc_seed: Optional[int] = 777
    """Seed of the frequencies: ``torch.randperm(out * in)`` from a torch CPU generator, as PEFT draws them."""
    fan_in_fan_out: bool = False
    """The target stores its weight [in, out] (GPT-2's Conv1D); set automatically for those layers."""
    target_modules: Optional[Union[List[str], str]] = None
    """Module names to adapt (list of names or suffixes, a whole-name regex, or "all-linear"). None: the
    family's default (PEFT's table: LoRA's, GPT-2's mlp.c_proj)."""
    exclude_modules: Optional[Union[List[str], str]] = None
    """Modules never adapted, matched like target_modules."""
    bias: str = "none"
    """Biases trained and saved with the adapter: "none", "all" or "fourier_only" (the adapted layers')."""
    modules_to_save: Optional[List[str]] = None
    """Extra modules trained in full and saved with the adapter."""
    layers_to_transform: Optional[Union[List[int], int]] = None
    """Only adapt these layer indices."""
    layers_pattern: Optional[Union[List[str], str]] = None
    """Name of the layer list holding the indices."""
    n_frequency_pattern: Dict[str, int] = field(default_factory=dict)
    """Per-module n_frequency: {regex: n}, matched as PEFT does (``.*\\.KEY$``)."""
    init_weights: bool = False
    """False (PEFT's default): spectrum standard normal; True: zeros (the model starts unchanged)."""

    def __post_init__(self):
        if isinstance(self.target_modules, (set, tuple)):  # PEFT writes sets as lists; accept either
            self.target_modules = list(self.target_modules)
        if isinstance(self.exclude_modules, (set, tuple)):
            self.exclude_modules = list(self.exclude_modules)
        if self.bias not in ("none", "all", "fourier_only"):
            raise ValueError(f"FourierFTConfig.bias must be 'none', 'all' or 'fourier_only', found {self.bias!r}")
        if isinstance(self.random_loc_seed, bool) or not isinstance(self.random_loc_seed, int):
            raise ValueError(f"FourierFTConfig.random_loc_seed must be an integer (it seeds the frequencies), "
                             f"found {self.random_loc_seed!r}")
        if isinstance(self.target_modules, str) and (self.layers_to_transform is not None or self.layers_pattern):
            raise ValueError("FourierFTConfig: layers_to_transform / layers_pattern cannot be used when "
                             "target_modules is a regex string")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("FourierFTConfig.layers_pattern needs layers_to_transform (the indices to adapt)")
