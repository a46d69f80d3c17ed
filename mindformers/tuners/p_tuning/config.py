"""P-tuning settings (Liu et al. 2021, "GPT Understands, Too"), PEFT's ``PromptEncoderConfig``."""
from dataclasses import dataclass
from typing import ClassVar, Dict, Optional

from ..config import TunerConfig

ENCODERS = ("MLP", "LSTM")


@dataclass
class PromptEncoderConfig(TunerConfig):
    """Virtual tokens whose embeddings an encoder (MLP or bidirectional LSTM + MLP) computes from a trained
    table; PEFT saves only the encoder's output, so a saved adapter loads for inference."""

    peft_type: ClassVar[str] = "P_TUNING"
    pet_aliases: ClassVar[Dict[str, str]] = {"pre_seq_len": "num_virtual_tokens"}

    num_virtual_tokens: int = 20
    """How many virtual tokens precede each input."""
    token_dim: Optional[int] = None
    """Their width (the model's hidden size; filled in)."""
    num_transformer_submodules: Optional[int] = 1
    """1 for decoder-only models."""
    num_attention_heads: Optional[int] = None
    """Recorded for PEFT (filled in)."""
    num_layers: Optional[int] = None
    """Recorded for PEFT (filled in)."""
    encoder_reparameterization_type: str = "MLP"
    """MLP: Linear-ReLU-Linear-ReLU-Linear; LSTM: a bidirectional LSTM, then Linear-ReLU-Linear."""
    encoder_hidden_size: Optional[int] = None
    """The encoder's width (default: token_dim)."""
    encoder_num_layers: int = 2
    """LSTM layers (PEFT's MLP always has two hidden layers)."""
    encoder_dropout: float = 0.0
    """Dropout between LSTM layers."""
    modules_to_save: Optional[list] = None
    """Extra modules trained in full and saved with the adapter."""

    def __post_init__(self):
        kind = str(self.encoder_reparameterization_type).upper().replace("PROMPTENCODERREPARAMETERIZATIONTYPE.", "")
        if kind not in ENCODERS:
            raise ValueError(f"encoder_reparameterization_type must be one of {ENCODERS}, found "
                             f"{self.encoder_reparameterization_type!r}")
        self.encoder_reparameterization_type = kind
        if self.num_virtual_tokens <= 0:
            raise ValueError(f"num_virtual_tokens must be positive, found {self.num_virtual_tokens}")
