"""Adding an adaption prompt (PEFT's ``AdaptionPromptModel``): the top ``adapter_layers`` attention layers get
an :class:`AdaptedAttention` in their ``tuner`` slot (installed once per layer)."""
import re
from typing import List, Optional

from mindspore import nn

from ..attention import attention_layers, install
from ..targets import seeded_rng
from ..tuner_layer import AdapterState, rename_parameters
from .config import AdaptionPromptConfig
from .layer import SLOTS, AdaptedAttention


def inject_adaption_prompt(model: nn.Cell, config: AdaptionPromptConfig, adapter_name: str, state: AdapterState,
                           seed: Optional[int] = None) -> List[str]:
    layers = attention_layers(model, "adaption prompt")
    if config.adapter_layers > len(layers):
        raise ValueError(f"adapter_layers {config.adapter_layers} exceeds the model's {len(layers)} layers")
    config.target_modules = "self_attn"
    rng = seeded_rng(seed)
    paths = []
    for path, attention in layers[len(layers) - config.adapter_layers:]:
        if attention.o_proj.bias is not None:
            raise ValueError(f"{path}.o_proj has a bias, which PEFT's adaption prompt adds a second time; "
                             "adaption prompts are supported on attention without an output bias")
        install(attention, AdaptedAttention, path, state).add_adapter(adapter_name, config.adapter_len,
                                                                      attention.q_proj.in_features, rng)
        paths.append(f"{path}.tuner")
    rename_parameters(model)
    return paths


def file_key(path: str, name: str):
    """``<attention>.tuner.adaption_prompt.<name>.weight`` -> PEFT's ``<attention>.adaption_prompt`` (its keys
    carry no adapter name)."""
    match = re.match(rf"(.*)\.tuner\.({'|'.join(SLOTS)})\.{re.escape(name)}\.weight$", path)
    return f"base_model.model.{match.group(1)}.{match.group(2)}" if match else None
