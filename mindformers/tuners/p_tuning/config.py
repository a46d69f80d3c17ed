"""P-tuning settings (Liu et al. 2021, "GPT Understands, Too"), PEFT's ``PromptEncoderConfig``."""
from dataclasses import dataclass
from typing import ClassVar, Dict, Optional

from ..prompt_learning import PromptLearningConfig

ENCODERS = ("MLP", "LSTM")


@dataclass
class PromptEncoderConfig(PromptLearningConfig):
    """Virtual tokens whose embeddings an encoder (MLP or bidirectional LSTM + MLP) computes from a trained
    table; PEFT saves only the encoder's output, so a saved adapter loads for inference."""

    peft_type: ClassVar[str] = "P_TUNING"
    pet_aliases: ClassVar[Dict[str, str]] = {"pre_seq_len": "num_virtual_tokens"}

    encoder_reparameterization_type: str = "MLP"
    """MLP: Linear-ReLU-Linear-ReLU-Linear; LSTM: a bidirectional LSTM, then Linear-ReLU-Linear."""
    encoder_hidden_size: Optional[int] = None
    """The encoder's width (default: token_dim)."""
    encoder_num_layers: int = 2
    """LSTM layers (PEFT's MLP always has two hidden layers)."""
    encoder_dropout: float = 0.0
    """Dropout between LSTM layers."""

    def __post_init__(self):
        super().__post_init__()
        kind = str(self.encoder_reparameterization_type).upper().replace("PROMPTENCODERREPARAMETERIZATIONTYPE.", "")
        if kind not in ENCODERS:
            raise ValueError(f"encoder_reparameterization_type must be one of {ENCODERS}, found "
                             f"{self.encoder_reparameterization_type!r}")
        self.encoder_reparameterization_type = kind
