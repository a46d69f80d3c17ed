"""LLaMA-Pro's block expansion (ms-swift ``LLaMAPro.prepare_model``): after every ``layers / num_groups``
decoder layers a copy of the last one is inserted with ``o_proj`` and ``down_proj`` (and their biases) zeroed,
so each new block passes its input through unchanged at first; the layers are renumbered (the KV cache gets a
slot pair per layer) and ``num_hidden_layers`` grows. The new blocks are the adapter's state: trained and
saved (SWIFT's keys, the new layers' paths); the rest of the model is frozen."""
from typing import Dict, List, Optional, Set

import numpy as np
from mindspore import nn

from ...models.common.decoder import DecoderLayer
from ...utils import write_parameter
from ..tuner_layer import AdapterState, rename_parameters
from .config import LLaMAProConfig

ZEROED = ("self_attn.o_proj.", "mlp.down_proj.")


def _layers(model: nn.Cell) -> nn.CellList:
    stack = model.stack() if hasattr(model, "stack") else None
    layers = getattr(stack, "layers", None)
    if not isinstance(layers, nn.CellList) or not all(isinstance(layer, DecoderLayer) for layer in layers):
        raise TypeError(f"LLaMA-Pro expands the decoder layers of Llama-style models (model.layers), not "
                        f"{type(model).__name__}")
    return layers


def inject_llama_pro(model: nn.Cell, config: LLaMAProConfig, adapter_name: str, state: AdapterState,
                     seed: Optional[int] = None) -> List[str]:
    model_config = model.config
    layers = _layers(model)
    count = len(layers)
    if count % config.num_new_blocks:
        raise ValueError(f"LLaMA-Pro: num_new_blocks {config.num_new_blocks} must divide the {count} layers")
    if len({model_config.mlp_class(i) for i in range(count)}) > 1:
        raise ValueError("LLaMA-Pro copies layers of one kind; this model mixes dense and MoE layers")
    config.num_groups = config.num_groups or config.num_new_blocks
    config.model_type = config.model_type or model_config.model_type
    stride = count // config.num_groups
    expanded, added, kinds = [], [], list(getattr(model_config, "layer_types", None) or [])
    new_kinds = []
    for i, layer in enumerate(layers):
        expanded.append(layer)
        new_kinds.append(kinds[i] if kinds else None)
        if (i + 1) % stride == 0:
            expanded.append(_zeroed_copy(model_config, layer, i))
            added.append(len(expanded) - 1)
            new_kinds.append(kinds[i] if kinds else None)
    stack = model.stack()
    stack.layers = nn.CellList(expanded)
    model_config.num_hidden_layers = len(expanded)
    if kinds:
        model_config.layer_types = new_kinds
    blocks: Dict[str, List[int]] = dict(getattr(model, "_llama_pro_blocks", {}))
    blocks[adapter_name] = added
    object.__setattr__(model, "_llama_pro_blocks", blocks)
    rename_parameters(model)
    prefix = _prefix(model)
    return [f"{prefix}{i}" for i in added]


def _zeroed_copy(model_config, layer: DecoderLayer, index: int) -> DecoderLayer:
    copy = DecoderLayer(model_config, index)
    source = dict(layer.parameters_and_names())
    for path, param in copy.parameters_and_names():
        value = source[path].asnumpy()
        write_parameter(param, np.zeros_like(value) if path.startswith(ZEROED) else value)
    return copy


def _prefix(model: nn.Cell) -> str:
    stack = model.stack()
    path = next(p for p, cell in model.cells_and_names() if cell is stack)
    return f"{path}.layers."


def owned_paths(model: nn.Cell, adapter_name: str) -> Set[str]:
    """The parameter paths of adapter ``adapter_name``'s new blocks."""
    prefixes = tuple(f"{_prefix(model)}{i}." for i in getattr(model, "_llama_pro_blocks", {}).get(adapter_name, ()))
    return {path for path, _ in model.parameters_and_names() if prefixes and path.startswith(prefixes)}
