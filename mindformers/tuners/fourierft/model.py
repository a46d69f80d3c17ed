"""Putting FourierFT layers into a model (PEFT's ``FourierFTModel``): every targeted Linear/Conv1D gets a
spectrum of ``n_frequency`` coefficients (``n_frequency_pattern`` per module)."""
import re
from typing import List, Optional

from mindspore import nn

from ...models.common.layers import Conv1D
from ..targets import match_linear_layers, seeded_rng
from ..tuner_layer import AdapterState, rename_parameters, replace_module
from .config import FourierFTConfig
from .layer import FourierFTLinear


def n_frequency_for(config: FourierFTConfig, name: str) -> int:
    """PEFT's rule: the first ``n_frequency_pattern`` key matching ``name`` as ``.*\\.KEY$``, else a key equal
    to the whole name, else ``n_frequency``."""
    key = next((k for k in config.n_frequency_pattern if re.match(rf".*\.{k}$", name)), name)
    return config.n_frequency_pattern.get(key, config.n_frequency)


def inject_fourierft(model: nn.Cell, config: FourierFTConfig, adapter_name: str, state: AdapterState,
                     seed: Optional[int] = None) -> List[str]:
    """Add adapter ``adapter_name`` to every layer ``config`` targets; returns the adapted module names."""
    matched, layers = match_linear_layers(model, config, "FOURIERFT", FourierFTLinear)
    rng = seeded_rng(seed)
    for name in matched:
        layer = layers[name]
        if not isinstance(layer, FourierFTLinear):
            config.fan_in_fan_out = isinstance(layer, Conv1D)  # as PEFT sets it for GPT-2's Conv1D
            layer = FourierFTLinear(layer, state)
            replace_module(model, name, layer)
        layer.add_adapter(adapter_name, n_frequency_for(config, name), config, rng)
    rename_parameters(model)
    return matched
