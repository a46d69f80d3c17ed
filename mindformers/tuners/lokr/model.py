"""Putting LoKr layers into a model (PEFT's ``LoKrModel``), as every LyCORIS method does."""
from typing import List, Optional

from mindspore import nn

from ..lycoris import inject_lycoris
from ..tuner_layer import AdapterState
from .config import LoKrConfig
from .layer import LoKrLinear


def inject_lokr(model: nn.Cell, config: LoKrConfig, adapter_name: str, state: AdapterState,
                seed: Optional[int] = None) -> List[str]:
    return inject_lycoris(model, config, adapter_name, state, seed, LoKrLinear)
