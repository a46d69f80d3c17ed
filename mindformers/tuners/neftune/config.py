"""SWIFT's NEFTune settings (Jain et al. 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning")."""
from dataclasses import dataclass
from typing import Any, ClassVar, Dict

from ..config import TunerConfig


@dataclass
class NEFTuneConfig(TunerConfig):
    """Uniform noise on the token embeddings while the model trains; saved with ``"swift_type": "NEFTUNE"``."""

    peft_type: ClassVar[str] = "NEFTUNE"
    pet_aliases: ClassVar[Dict[str, str]] = {"neftune_noise_alpha": "noise_alpha"}

    noise_alpha: float = 5.0
    """Noise scale: uniform in +-noise_alpha / sqrt(seq_len * hidden)."""

    def __post_init__(self):
        if self.noise_alpha < 0:
            raise ValueError(f"NEFTuneConfig.noise_alpha must be >= 0, found {self.noise_alpha}")

    def to_dict(self) -> Dict[str, Any]:
        data = super().to_dict()
        data["swift_type"] = self.peft_type
        return data
