"""AdaLoRA settings (Zhang et al. 2023, "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning"), with
PEFT 0.21's field names: LoRA's fields plus the rank budget schedule.

Training has three phases over ``total_step`` optimizer steps: ``tinit`` warm-up steps at the initial budget
(``init_r`` per layer), a budgeting phase in which the total rank falls on a cubic schedule to ``target_r`` per
layer (triplets are masked every ``deltaT`` steps by importance), and ``tfinal`` final steps at the allocation
fixed at step ``total_step - tfinal``. ``rank_pattern`` records which triplets each layer keeps.
"""
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional

from ..lora.config import LoraConfig

E_SLOT = "lora_E"


def _without_adapter_name(key: str) -> str:
    """``<module>.lora_E.<adapter>`` (PEFT's key while training) -> ``<module>.lora_E`` (its saved key)."""
    parts = key.split(".")
    return ".".join(parts[:-1]) if len(parts) > 1 and parts[-2] == E_SLOT else key


@dataclass
class AdaLoraConfig(LoraConfig):
    """SVD-shaped low-rank updates ``W x + B diag(E) A x * lora_alpha / init_r`` whose ranks are pruned during
    training to a total budget (``r`` is not used: the initial rank is ``init_r``)."""

    peft_type: ClassVar[str] = "ADALORA"
    pet_aliases: ClassVar[Dict[str, str]] = {}

    target_r: int = 8
    """Target average rank per adapted layer: the final budget is target_r x the number of layers."""
    init_r: int = 12
    """Initial rank of every adapted layer."""
    tinit: int = 0
    """Warm-up steps before any rank is pruned."""
    tfinal: int = 0
    """Final steps at the fixed allocation."""
    deltaT: int = 1  # pylint: disable=invalid-name  (PEFT's name)
    """Steps between two budget allocations in the budgeting phase."""
    beta1: float = 0.85
    """EMA coefficient of the sensitivity |w * grad|."""
    beta2: float = 0.85
    """EMA coefficient of its uncertainty."""
    orth_reg_weight: float = 0.5
    """Weight of the orthogonality penalty mean(||A A^T - I||_F, ||B^T B - I||_F) added to the training loss."""
    total_step: Optional[int] = None
    """Total optimizer steps of the run (required: the budget schedule is a function of it)."""
    rank_pattern: Optional[Dict[str, List[bool]]] = None
    """Set by the rank allocation: ``<module>.lora_E`` -> which of the init_r triplets are kept."""

    def __post_init__(self):
        pattern, self.rank_pattern = self.rank_pattern, {}  # LoRA's check reads rank_pattern as {regex: rank}
        super().__post_init__()
        if self.total_step is None or self.total_step <= 0:
            raise ValueError(f"AdaLoRA needs total_step, the number of optimizer steps of the run (> 0), found "
                             f"{self.total_step!r}: its rank budget schedule depends on it (PEFT requires it too)")
        for name in ("target_r", "init_r", "deltaT"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, found {getattr(self, name)!r}")
        if self.init_r < self.target_r:
            raise ValueError(f"init_r ({self.init_r}) must be at least target_r ({self.target_r}): AdaLoRA prunes "
                             "ranks from init_r down to target_r per layer")
        if self.tinit < 0 or self.tfinal < 0 or self.tinit >= self.total_step - self.tfinal:
            raise ValueError(f"tinit={self.tinit}, tfinal={self.tfinal} and total_step={self.total_step} leave no "
                             "budgeting phase (need 0 <= tinit < total_step - tfinal); decrease tinit/tfinal or "
                             "increase total_step")
        for name in ("beta1", "beta2"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), found {getattr(self, name)!r}")
        if self.orth_reg_weight < 0:
            raise ValueError(f"orth_reg_weight must be >= 0, found {self.orth_reg_weight!r}")
        if self.use_dora or self.target_parameters or self.alpha_pattern:
            raise ValueError("AdaLoRA adapts linear layers with one lora_alpha: use_dora, target_parameters and "
                             "alpha_pattern must be unset (PEFT has none of them for AdaLoRA)")
        if pattern:
            for key, keep in pattern.items():
                if not isinstance(keep, list) or not all(isinstance(k, bool) for k in keep):
                    raise ValueError(f"AdaLoRA's rank_pattern maps <module>.lora_E to a list of booleans (the kept "
                                     f"triplets); found {key!r}: {keep!r}")
            pattern = {_without_adapter_name(k): v for k, v in pattern.items()}
        self.rank_pattern = pattern or None

    def pattern_of(self, module: str) -> Optional[List[bool]]:
        """The kept triplets of ``module`` in ``rank_pattern``, or None when it has no entry."""
        return (self.rank_pattern or {}).get(f"{module}.{E_SLOT}")
