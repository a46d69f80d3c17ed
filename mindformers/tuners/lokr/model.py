"""Putting LoKr layers into a model (PEFT's ``LoKrModel``): targets matched as LoRA's, ranks and alphas by
``rank_pattern`` / ``alpha_pattern``."""
from typing import List, Optional

from mindspore import nn

from ..targets import match_linear_layers, pattern_value, seeded_rng
from ..tuner_layer import AdapterState, rename_parameters, replace_module
from .config import LoKrConfig
from .layer import LoKrLinear


def inject_lokr(model: nn.Cell, config: LoKrConfig, adapter_name: str, state: AdapterState,
                seed: Optional[int] = None) -> List[str]:
    matched, layers = match_linear_layers(model, config, "LOKR", LoKrLinear)
    rng = seeded_rng(seed)
    for name in matched:
        layer = layers[name]
        if not isinstance(layer, LoKrLinear):
            layer = LoKrLinear(layer, state)
            replace_module(model, name, layer)
        r, alpha = pattern_value(config.rank_pattern, name, config.r), pattern_value(config.alpha_pattern, name, config.alpha)
        layer.add_adapter(adapter_name, r, alpha, config, rng)
    rename_parameters(model)
    return matched
