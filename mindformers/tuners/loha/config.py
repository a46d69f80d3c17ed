"""LoHa settings (Hyeon-Woo et al. 2022, FedPara; LyCORIS), with PEFT's field names."""
from dataclasses import dataclass
from typing import ClassVar, Dict

from ..lycoris import LycorisConfig


@dataclass
class LoHaConfig(LycorisConfig):
    """Low-rank Hadamard product: ``W x + ((A1 B1) * (A2 B2)) x * alpha / r`` on chosen linear layers."""

    peft_type: ClassVar[str] = "LOHA"
    inert_fields: ClassVar[Dict[str, tuple]] = {"use_effective_conv2d": (False, True)}  # convolutions only
    pet_aliases: ClassVar[Dict[str, str]] = {"loha_rank": "r", "rank": "r", "loha_alpha": "alpha"}

    init_weights: bool = True
    """True: A1, B1, A2 Kaiming-uniform and B2 zero (the update starts at 0); False: all random."""
