"""LoKr settings (Kronecker-product updates, LyCORIS), with PEFT's field names (``LoKrConfig``)."""
from dataclasses import dataclass
from typing import ClassVar, Dict, Union

from ..lycoris import LycorisConfig


@dataclass
class LoKrConfig(LycorisConfig):
    """``W x + kron(W1, W2) x * alpha / r`` on chosen linear layers, W1 / W2 full or rank-r factorised."""

    peft_type: ClassVar[str] = "LOKR"
    inert_fields: ClassVar[Dict[str, tuple]] = {"use_effective_conv2d": (False, True)}  # convolutions only
    pet_aliases: ClassVar[Dict[str, str]] = {"lokr_rank": "r", "rank": "r", "lokr_alpha": "alpha"}

    decompose_both: bool = False
    """Factorise the left factor W1 too (when r is small enough)."""
    decompose_factor: int = -1
    """Kronecker decomposition factor (-1: near the square root of each dimension)."""
    rank_dropout_scale: bool = False
    """Under rank dropout, divide the kept rows by their fraction (PEFT's LoHa always does)."""
    init_weights: Union[bool, str] = True
    """True: W1 zero (the update starts at 0); "lycoris": W2 zero; False: all random."""

    def __post_init__(self):
        super().__post_init__()
        if self.init_weights not in (True, False, "lycoris"):
            raise ValueError(f"LoKrConfig.init_weights must be True, False or 'lycoris', found {self.init_weights!r}")
