"""SWIFT's LLaMA-Pro settings (Wu et al. 2024, block expansion), saved with ``"swift_type": "LLAMAPRO"``."""
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional

from ..config import TunerConfig


@dataclass
class LLaMAProConfig(TunerConfig):
    """``num_new_blocks`` copies of decoder layers inserted after every ``layers / num_groups`` layers, their
    output projections zeroed (the model is unchanged at first); only the new blocks train."""

    peft_type: ClassVar[str] = "LLAMAPRO"

    model_type: Optional[str] = None
    """The family (SWIFT's key mapping; here the model's own layer list is used, so it is only recorded)."""
    num_new_blocks: Optional[int] = None
    """How many blocks to add; must divide the number of layers."""
    num_groups: Optional[int] = None
    """Groups the new blocks are spread over (default: num_new_blocks, one after every layers/num_new_blocks)."""

    def __post_init__(self):
        if not isinstance(self.num_new_blocks, int) or self.num_new_blocks <= 0:
            raise ValueError(f"LLaMAProConfig.num_new_blocks must be a positive integer, found {self.num_new_blocks!r}")

    def to_dict(self) -> Dict[str, Any]:
        data = super().to_dict()
        data["swift_type"] = self.peft_type
        return data
