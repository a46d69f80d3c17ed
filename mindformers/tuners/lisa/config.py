"""LISA's settings (Pan et al. 2024, "LISA: Layerwise Importance Sampling for Memory-Efficient Large Language
Model Fine-Tuning"), under SWIFT's training-argument names."""
from dataclasses import dataclass


@dataclass
class LisaConfig:
    """Which decoder layers train, and for how long: every ``lisa_step_interval`` optimizer steps
    ``lisa_activated_layers`` layers are drawn uniformly without replacement; they train with the embeddings,
    the final norm and the output head while the other layers stay frozen."""

    lisa_activated_layers: int = 2
    """Decoder layers trained at a time (SWIFT's ``lisa_activated_layers``)."""
    lisa_step_interval: int = 20
    """Optimizer steps between two drawings (SWIFT's ``lisa_step_interval``)."""
    seed: int = 42
    """Seed of the drawings; period p draws from ``seed`` and p alone, so a resumed run draws the same."""

    def __post_init__(self):
        if not isinstance(self.lisa_activated_layers, int) or self.lisa_activated_layers <= 0:
            raise ValueError(f"LisaConfig.lisa_activated_layers must be a positive integer, found "
                             f"{self.lisa_activated_layers!r}")
        if not isinstance(self.lisa_step_interval, int) or self.lisa_step_interval <= 0:
            raise ValueError(f"LisaConfig.lisa_step_interval must be a positive integer, found "
                             f"{self.lisa_step_interval!r}")
