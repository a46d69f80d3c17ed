"""Putting LoHa layers into a model (PEFT's ``LoHaModel``): targets matched as LoRA's, ranks and alphas by
``rank_pattern`` / ``alpha_pattern``."""
from typing import List, Optional

import numpy as np
from mindspore import nn

from ...models.common.layers import Conv1D, Linear
from ..targets import ALL_LINEAR, CLASSIFIER_HEADS, is_target, pattern_value
from ..tuner_layer import AdapterState, rename_parameters, replace_module
from .config import LoHaConfig
from .layer import LoHaLinear


def inject_loha(model: nn.Cell, config: LoHaConfig, adapter_name: str, state: AdapterState,
                seed: Optional[int] = None) -> List[str]:
    from ...registry import TUNERS
    from ..tuner_model import is_adapter_path

    if config.target_modules is None:
        config.target_modules = TUNERS.get("LOHA").targets_for(model)
    candidates = {name: cell for name, cell in model.cells_and_names()
                  if name and isinstance(cell, (Linear, Conv1D, LoHaLinear)) and not is_adapter_path(name)}
    targets = config.target_modules
    if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
        targets = [n for n in candidates if n.split(".")[-1] not in ("lm_head", *CLASSIFIER_HEADS)]
    matched = [name for name in candidates if is_target(config, name, targets)]
    if not matched:
        raise ValueError(f"target_modules {config.target_modules!r} matched no linear layer of {type(model).__name__}; "
                         f"layers are named like {', '.join(list(candidates)[:6])}, ...")
    if seed is None:
        import mindspore as ms

        seed = ms.get_seed()
    rng = np.random.default_rng(seed)
    for name in matched:
        layer = candidates[name]
        if not isinstance(layer, LoHaLinear):
            layer = LoHaLinear(layer, state)
            replace_module(model, name, layer)
        r = pattern_value(config.rank_pattern, name, config.r)
        layer.add_adapter(adapter_name, r, pattern_value(config.alpha_pattern, name, config.alpha), config.init_weights, rng)
    rename_parameters(model)
    if isinstance(config.target_modules, str) and config.target_modules.lower() == ALL_LINEAR:
        config.target_modules = sorted(matched)
    return matched
