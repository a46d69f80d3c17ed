"""Prompt tuning settings (Lester et al. 2021), with PEFT's field names (``PromptTuningConfig``)."""
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional

from ..prompt_learning import PromptLearningConfig

INITS = ("RANDOM", "TEXT", "SAMPLE_VOCAB")


@dataclass
class PromptTuningConfig(PromptLearningConfig):
    """``num_virtual_tokens`` trained embeddings put before every input; the model itself is frozen."""

    peft_type: ClassVar[str] = "PROMPT_TUNING"
    pet_aliases: ClassVar[Dict[str, str]] = {"pre_seq_len": "num_virtual_tokens"}

    prompt_tuning_init: str = "RANDOM"
    """RANDOM (standard normal, as PEFT's nn.Embedding), TEXT (the embeddings of ``prompt_tuning_init_text``'s
    tokens, repeated to length) or SAMPLE_VOCAB (embeddings of random vocabulary tokens)."""
    prompt_tuning_init_text: Optional[str] = None
    """The text for TEXT initialisation."""
    tokenizer_name_or_path: Optional[str] = None
    """The tokenizer that tokenises ``prompt_tuning_init_text`` (a preset or a directory)."""
    tokenizer_kwargs: Optional[Dict[str, Any]] = None
    """Extra arguments of that tokenizer."""

    def __post_init__(self):
        super().__post_init__()
        if str(self.prompt_tuning_init).upper() not in INITS:
            raise ValueError(f"prompt_tuning_init must be one of {INITS}, found {self.prompt_tuning_init!r}")
        self.prompt_tuning_init = str(self.prompt_tuning_init).upper()
        if self.prompt_tuning_init == "TEXT" and not (self.prompt_tuning_init_text and self.tokenizer_name_or_path):
            raise ValueError("prompt_tuning_init TEXT needs prompt_tuning_init_text and tokenizer_name_or_path")
