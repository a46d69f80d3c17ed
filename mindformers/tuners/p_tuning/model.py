"""Adding a p-tuning adapter: the token embedding (as prompt tuning extends it) gets an encoder while the
adapter trains, or the saved table when it is loaded for inference (``inference_mode``: PEFT saves only the
encoder's output)."""
from typing import Dict, List, Optional

import numpy as np
from mindspore import nn

from ..prompt_learning import input_embedding, prompt_embedding
from ..targets import seeded_rng
from ..tuner_layer import AdapterState, rename_parameters
from .config import PromptEncoderConfig
from .layer import PromptEncoder


def inject_p_tuning(model: nn.Cell, config: PromptEncoderConfig, adapter_name: str, state: AdapterState,
                    seed: Optional[int] = None) -> List[str]:
    embedding = prompt_embedding(model, config, state)
    hidden = embedding.weight.shape[1]
    config.encoder_hidden_size = config.encoder_hidden_size or hidden
    if config.inference_mode:  # a saved adapter: its table is the encoder's output
        embedding.add_adapter(adapter_name, np.zeros((config.num_virtual_tokens, hidden)))
    else:
        embedding.add_encoder(adapter_name, PromptEncoder(config, hidden, seeded_rng(seed), embedding.weight.dtype),
                              config.num_virtual_tokens)
    rename_parameters(model)
    return [input_embedding(model)[0]]


def export_prompt(model: nn.Cell, name: str, weights: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """PEFT's file of a p-tuning adapter: the encoder's output as ``prompt_embeddings`` (its weights are not
    saved, as PEFT does)."""
    _, embedding = input_embedding(model)
    if name not in embedding.prompt_encoder:
        return weights
    table = embedding.prompt_encoder[name]().asnumpy()
    kept = {k: v for k, v in weights.items() if ".prompt_encoder." not in k}
    kept["prompt_embeddings"] = table
    return kept
