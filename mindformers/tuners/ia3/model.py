"""Putting IA3 layers into a model (PEFT's ``IA3Model._create_and_replace``): every targeted Linear/Conv1D
gets a vector; feed-forward targets scale their input."""
from typing import List, Optional

import numpy as np
from mindspore import nn

from ...models.common.layers import Conv1D, Linear
from ..targets import ALL_LINEAR, CLASSIFIER_HEADS, is_target, listed
from ..tuner_layer import AdapterState, rename_parameters, replace_module
from .config import IA3Config
from .layer import IA3Linear

# PEFT 0.21's TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING / ..._FEEDFORWARD_MODULES_MAPPING for the
# dense families it lists (Qwen3 follows Qwen2); MoE families have no linear feed-forward to scale
DEFAULT_TARGETS = {**{family: ("k_proj", "v_proj", "down_proj") for family in ("llama", "qwen2", "qwen3", "mistral")},
                   "gpt2": ("c_attn", "mlp.c_proj")}
DEFAULT_FEEDFORWARD = {**{family: ("down_proj",) for family in ("llama", "qwen2", "qwen3", "mistral")},
                       "gpt2": ("mlp.c_proj",)}


def inject_ia3(model: nn.Cell, config: IA3Config, adapter_name: str, state: AdapterState,
               seed: Optional[int] = None) -> List[str]:
    """Add adapter ``adapter_name`` to every layer ``config`` targets; returns the adapted module names."""
    from ...registry import TUNERS

    if config.target_modules is None:
        config.target_modules = TUNERS.get("IA3").targets_for(model)
        if config.feedforward_modules is None:
            config.feedforward_modules = list(DEFAULT_FEEDFORWARD.get(model.config.model_type, ()))
    feedforward = config.feedforward_modules or []
    from ..tuner_model import is_adapter_path

    candidates = {name: cell for name, cell in model.cells_and_names()  # not inside any method's adapters
                  if name and isinstance(cell, (Linear, Conv1D, IA3Linear)) and not is_adapter_path(name)}
    targets = config.target_modules
    if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
        targets = [n for n in candidates if n.split(".")[-1] not in ("lm_head", *CLASSIFIER_HEADS)]
    matched = [name for name in candidates if is_target(config, name, targets)]
    if not matched:
        raise ValueError(f"target_modules {config.target_modules!r} matched no linear layer of {type(model).__name__}; "
                         f"layers are named like {', '.join(list(candidates)[:6])}, ...")
    if isinstance(feedforward, list) and not isinstance(targets, str) and not set(feedforward) <= set(targets):
        raise ValueError(f"feedforward_modules {feedforward} must be a subset of target_modules {targets}")
    if seed is None:
        import mindspore as ms

        seed = ms.get_seed()
    rng = np.random.default_rng(seed)
    for name in matched:
        layer = candidates[name]
        ff = bool(feedforward) and listed(feedforward, name)
        if not isinstance(layer, IA3Linear):
            if isinstance(layer, Conv1D):
                config.fan_in_fan_out = True  # as PEFT does for GPT-2's Conv1D
            layer = IA3Linear(layer, state, ff)
            replace_module(model, name, layer)
        elif layer.is_feedforward != ff:
            raise ValueError(f"{name} already scales its {'input' if layer.is_feedforward else 'output'}; another "
                             "IA3 adapter cannot scale the other side")
        layer.add_adapter(adapter_name, config.init_ia3_weights, rng)
    rename_parameters(model)
    if isinstance(config.target_modules, str) and config.target_modules.lower() == ALL_LINEAR:
        config.target_modules = sorted(matched)
    return matched
