"""Putting VeRA layers into a model (PEFT's ``VeraModel``): one pair of projections per adapter, sized to the
largest targeted layer and drawn exactly as PEFT draws them, shared by every targeted Linear/Conv1D layer."""
import math
from typing import List, Optional

from mindspore import nn

from ...models.common.layers import Conv1D
from ..lora.layer import _Vector
from ..targets import match_linear_layers, seeded_rng
from ..torch_random import TorchGenerator
from ..tuner_layer import AdapterState, rename_parameters, replace_module
from .config import VeraConfig
from .layer import PROJECTIONS, VeraLinear


def _kaiming_uniform(generator: TorchGenerator, shape):
    """PEFT's ``vera.model._kaiming_init``: U(-bound, bound), bound = sqrt(3) * sqrt(2) / sqrt(fan_in), fan_in =
    shape[1], from the shared generator (so A then B continue one stream)."""
    bound = math.sqrt(3.0) * (math.sqrt(2) / math.sqrt(shape[1]))
    return generator.uniform(shape, -bound, bound)


def projections(config: VeraConfig, max_out: int, max_in: int):
    """``(vera_A [r, max_in], vera_B [max_out, r])`` as float32 arrays, equal to PEFT's for the same key."""
    generator = TorchGenerator(config.projection_prng_key)
    vera_a = _kaiming_uniform(generator, (config.r, max_in))
    return vera_a, _kaiming_uniform(generator, (max_out, config.r))


def inject_vera(model: nn.Cell, config: VeraConfig, adapter_name: str, state: AdapterState,
                seed: Optional[int] = None) -> List[str]:
    """Add adapter ``adapter_name`` to every layer ``config`` targets; returns the adapted module names."""
    matched, layers = match_linear_layers(model, config, "VERA", VeraLinear)
    max_out = max(layers[name].out_features for name in matched)
    max_in = max(layers[name].in_features for name in matched)
    dtype = layers[matched[0]].weight.dtype
    vera_a, vera_b = (_Vector(value, dtype) for value in projections(config, max_out, max_in))
    rng = seeded_rng(seed)
    for name in matched:
        layer = layers[name]
        if not isinstance(layer, VeraLinear):
            config.fan_in_fan_out = isinstance(layer, Conv1D)  # as PEFT sets it for GPT-2's Conv1D
            layer = VeraLinear(layer, state)
            replace_module(model, name, layer)
        layer.add_adapter(adapter_name, vera_a, vera_b, config, rng)
    rename_parameters(model)
    return matched


def file_key(path: str, adapter_name: str) -> Optional[str]:
    """The shared projections are one tensor each in PEFT's file, at the model level (``base_model.vera_A``),
    whichever layer's path names them in memory."""
    for slot in PROJECTIONS:
        if f".{slot}.{adapter_name}." in f".{path}":
            return f"base_model.{slot}"
    return None
