"""Adding a prefix-tuning adapter: every attention layer gets a :class:`PrefixAttention` in its ``tuner`` slot
(installed once), all sharing the adapter's :class:`PrefixEncoder`."""
import re
from typing import Dict, List, Optional

import numpy as np
from mindspore import nn

from ..attention import attention_layers, install
from ..targets import seeded_rng
from ..tuner_layer import AdapterState, rename_parameters
from .config import PrefixTuningConfig
from .layer import PrefixAttention, PrefixEncoder


def _hooks(model: nn.Cell) -> List[PrefixAttention]:
    return [cell for _, cell in model.cells_and_names() if isinstance(cell, PrefixAttention)]


def inject_prefix_tuning(model: nn.Cell, config: PrefixTuningConfig, adapter_name: str, state: AdapterState,
                         seed: Optional[int] = None) -> List[str]:
    layers = attention_layers(model, "prefix tuning")
    first = layers[0][1]
    token_dim = first.num_kv_heads * first.head_dim  # PEFT: key/value width (GQA-aware)
    if config.token_dim not in (None, token_dim):
        raise ValueError(f"token_dim {config.token_dim} does not match the model's key/value width {token_dim} "
                         f"({first.num_kv_heads} kv heads x {first.head_dim})")
    if config.num_layers not in (None, len(layers)):
        raise ValueError(f"num_layers {config.num_layers} does not match the model's {len(layers)} attention layers")
    if config.num_attention_heads not in (None, first.num_kv_heads):
        raise ValueError(f"num_attention_heads {config.num_attention_heads} does not match the model's "
                         f"{first.num_kv_heads} key/value heads")
    config.token_dim, config.num_layers, config.num_attention_heads = token_dim, len(layers), first.num_kv_heads
    config.encoder_hidden_size = config.encoder_hidden_size or token_dim
    encoder = PrefixEncoder(config, seeded_rng(seed), first.q_proj.weight.dtype)
    paths = []
    for i, (path, attention) in enumerate(layers):
        install(attention, PrefixAttention, path, i, len(layers), state).add_adapter(
            adapter_name, encoder, config.num_virtual_tokens)
        paths.append(f"{path}.tuner")
    object.__setattr__(model, "_prefix_positions_from", layers[0][1].tuner)
    rename_parameters(model)
    return paths


def file_key(path: str, name: str):
    """PEFT saves the table as plain ``prompt_embeddings`` (the encoder's output)."""
    return "prompt_embeddings" if re.search(rf"\.prefix_encoder\.{re.escape(name)}\.embedding\.weight$", path) else None


def export_prefix(model: nn.Cell, name: str, weights: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """PEFT's file of a prefix adapter trained with a projection: the projection's output as
    ``prompt_embeddings`` (PEFT saves no encoder weights)."""
    hook = _hooks(model)[0]
    if not hook.prefix_encoder[name].project:
        return weights
    return {"prompt_embeddings": hook.prompt(name).asnumpy()}
