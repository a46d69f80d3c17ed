"""Prefix tuning settings (Li & Liang 2021; P-Tuning v2, Liu et al. 2022), PEFT's ``PrefixTuningConfig``."""
from dataclasses import dataclass
from typing import ClassVar, Dict, Optional

from ..prompt_learning import PromptLearningConfig


@dataclass
class PrefixTuningConfig(PromptLearningConfig):
    """``num_virtual_tokens`` trained keys and values before every input in every attention layer (PEFT's
    past key values); the model itself is frozen. ``token_dim`` is filled in as the key/value width
    (kv heads x head_dim) and ``num_attention_heads`` as the key/value heads, as PEFT records them."""

    peft_type: ClassVar[str] = "PREFIX_TUNING"
    # MindFormers' prefix-tuning and P-Tuning v2 spellings
    pet_aliases: ClassVar[Dict[str, str]] = {"pre_seq_len": "num_virtual_tokens", "prefix_token_num": "num_virtual_tokens",
                                             "mid_dim": "encoder_hidden_size", "projection_dim": "encoder_hidden_size"}

    init_weights: Optional[str] = None
    """None: the table (or the projection's last layer) random; "zero": zeros, as PEFT does."""
    encoder_hidden_size: Optional[int] = None
    """Width of the projection MLP (default: token_dim)."""
    prefix_projection: bool = False
    """True: the prefix is an MLP (Linear-Tanh-Linear) of a smaller trained table while training; PEFT saves
    its output, so a saved adapter loads as a table."""

    def __post_init__(self):
        super().__post_init__()
        if self.init_weights not in (None, "zero"):
            raise ValueError(f"PrefixTuningConfig.init_weights must be None or 'zero', found {self.init_weights!r}")
