"""LongLoRA settings (Chen et al. 2024, "LongLoRA: Efficient Fine-tuning of Long-Context Large Language
Models"), SWIFT's ``LongLoRAConfig``: its LoRA fields plus the embeddings and norms it trains and the group
size of its shifted sparse attention."""
from dataclasses import dataclass
from typing import ClassVar, List, Optional, Tuple, Union

from ..lora import LoRAConfig


@dataclass
class LongLoRAConfig(LoRAConfig):
    """LoRA + trainable embeddings and norms + shifted sparse attention (S2-Attn) while training."""

    peft_type: ClassVar[str] = "LONGLORA"

    embedder_and_normalizer: Union[str, List[str], Tuple[str, ...]] = ("embed", "norm")
    """Parameters trained in full and saved with the adapter: a regex matched against the whole parameter
    name, or a list of substrings (SWIFT's rule)."""
    model_type: Optional[str] = None
    """SWIFT's switch for the attention patch ("llama"); here every Llama-style attention gets S2-Attn."""
    group_size_ratio: float = 0.25
    """Each attention group is this fraction of the training sequence."""

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.group_size_ratio <= 1:
            raise ValueError(f"LongLoRAConfig.group_size_ratio must be in (0, 1], found {self.group_size_ratio}")
        if self.model_type not in (None, "llama"):
            raise ValueError(f"LongLoRAConfig.model_type must be 'llama' (SWIFT supports only that) or None, "
                             f"found {self.model_type!r}")
        if isinstance(self.embedder_and_normalizer, list):
            self.embedder_and_normalizer = tuple(self.embedder_and_normalizer)
