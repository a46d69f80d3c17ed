"""Adaption prompt settings (LLaMA-Adapter, Zhang et al. 2023), PEFT's ``AdaptionPromptConfig``."""
from dataclasses import dataclass
from typing import ClassVar, Dict, Optional

from ..config import TunerConfig


@dataclass
class AdaptionPromptConfig(TunerConfig):
    """A gated prompt of ``adapter_len`` trained vectors that the top ``adapter_layers`` attention layers
    also attend to; the gate starts at zero, so the model is unchanged at first."""

    peft_type: ClassVar[str] = "ADAPTION_PROMPT"
    pet_aliases: ClassVar[Dict[str, str]] = {"adapter_length": "adapter_len"}

    target_modules: Optional[str] = None
    """The attention modules' name (PEFT fills in ``self_attn`` for Llama-style models)."""
    adapter_len: Optional[int] = None
    """Prompt length."""
    adapter_layers: Optional[int] = None
    """How many of the top layers get the prompt."""

    def __post_init__(self):
        for name in ("adapter_len", "adapter_layers"):
            value = getattr(self, name)
            if value is None or not isinstance(value, int) or value <= 0:
                raise ValueError(f"AdaptionPromptConfig.{name} must be a positive integer, found {value!r}")
        if self.target_modules not in (None, "self_attn"):
            raise ValueError(f"AdaptionPromptConfig.target_modules must be 'self_attn' (the attention modules), "
                             f"found {self.target_modules!r}")
