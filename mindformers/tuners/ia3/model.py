"""Putting IA3 layers into a model (PEFT's ``IA3Model._create_and_replace``): every targeted Linear/Conv1D
gets a vector; feed-forward targets scale their input."""
from typing import List, Optional

from mindspore import nn

from ...models.common.layers import Conv1D
from ..targets import listed, match_linear_layers, seeded_rng
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
    if config.target_modules is None and config.feedforward_modules is None:
        config.feedforward_modules = list(DEFAULT_FEEDFORWARD.get(model.config.model_type, ()))
    matched, layers = match_linear_layers(model, config, "IA3", IA3Linear)
    feedforward = config.feedforward_modules or []
    targets = config.target_modules
    if isinstance(feedforward, list) and not isinstance(targets, str) and not set(feedforward) <= set(targets):
        raise ValueError(f"feedforward_modules {feedforward} must be a subset of target_modules {targets}")
    rng = seeded_rng(seed)
    for name in matched:
        layer = layers[name]
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
    return matched
