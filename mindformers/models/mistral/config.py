"""Config of Mistral (Jiang et al. 2023): Llama with a sliding attention window on every layer."""
from dataclasses import dataclass
from typing import Any, Dict, Optional

from ..llama.config import LlamaConfig, check_sliding_window


@dataclass(init=False)
class MistralConfig(LlamaConfig):
    """Mistral: grouped-query attention in which a token sees itself and the ``sliding_window - 1`` tokens
    before it (every layer; None = full attention, as Mistral 7B v0.2 and later)."""

    model_type = "mistral"

    sliding_window: Optional[int] = 4096
    """Tokens a query sees, itself included; None for full attention."""
    num_key_value_heads: Optional[int] = 8
    intermediate_size: int = 14336
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 131072
    bos_token_id: Optional[int] = 1
    eos_token_id: Optional[Any] = 2

    def __post_init__(self):
        super().__post_init__()
        check_sliding_window(self)

    def to_hf_dict(self, architecture: Optional[str] = None) -> Dict[str, Any]:
        out = super().to_hf_dict(architecture)
        out["sliding_window"] = self.sliding_window  # null must be written: transformers' default is 4096
        return out
