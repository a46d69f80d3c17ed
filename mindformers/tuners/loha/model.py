"""Putting LoHa layers into a model (PEFT's ``LoHaModel``), as every LyCORIS method does."""
from typing import List, Optional

from mindspore import nn

from ..lycoris import inject_lycoris
from ..tuner_layer import AdapterState
from .config import LoHaConfig
from .layer import LoHaLinear


def inject_loha(model: nn.Cell, config: LoHaConfig, adapter_name: str, state: AdapterState,
                seed: Optional[int] = None) -> List[str]:
    return inject_lycoris(model, config, adapter_name, state, seed, LoHaLinear)
