"""Config of Qwen3 (Qwen2 minus the q/k/v bias, plus q/k RMSNorm; ``head_dim`` set on its own)."""
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from ..llama.config import Qwen2Config


@dataclass(init=False)
class Qwen3Config(Qwen2Config):
    """Qwen3 (Yang et al. 2025): grouped-query attention whose queries and keys are RMS-normalised per head
    before the rotation; ``head_dim`` (128 in the released models) need not be hidden / heads."""

    model_type = "qwen3"
    qk_norm: ClassVar[bool] = True
    requires_qkv_bias: ClassVar[bool] = False

    qkv_bias: bool = False
    head_dim: Optional[int] = 128
    rope_theta: float = 1000000.0
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[Any] = None
