"""Adding a p-tuning adapter: the token embedding (as prompt tuning extends it) gets an encoder while the
adapter trains, or the saved table when it is loaded for inference (``inference_mode``: PEFT saves only the
encoder's output)."""
from typing import Dict, List, Optional

import numpy as np
from mindspore import nn

from ..prompt_tuning.layer import PromptEmbedding
from ..prompt_tuning.model import input_embedding
from ..tuner_layer import AdapterState, rename_parameters, replace_module
from .config import PromptEncoderConfig
from .layer import PromptEncoder


def inject_p_tuning(model: nn.Cell, config: PromptEncoderConfig, adapter_name: str, state: AdapterState,
                    seed: Optional[int] = None) -> List[str]:
    path, embedding = input_embedding(model)
    hidden = embedding.weight.shape[1]
    if config.token_dim not in (None, hidden):
        raise ValueError(f"token_dim {config.token_dim} does not match the model's hidden size {hidden}")
    config.token_dim = hidden
    config.encoder_hidden_size = config.encoder_hidden_size or hidden
    config.num_attention_heads = config.num_attention_heads or model.config.num_attention_heads
    config.num_layers = config.num_layers or model.config.num_hidden_layers
    if not isinstance(embedding, PromptEmbedding):
        embedding = PromptEmbedding(embedding, state)
        replace_module(model, path, embedding)
        object.__setattr__(model, "_virtual_tokens_from", embedding)
    if seed is None:
        import mindspore as ms

        seed = ms.get_seed()
    rng = np.random.default_rng(seed)
    if config.inference_mode:  # a saved adapter: its table is the encoder's output
        embedding.add_adapter(adapter_name, np.zeros((config.num_virtual_tokens, hidden)))
    else:
        embedding.add_encoder(adapter_name, PromptEncoder(config, hidden, rng, embedding.weight.dtype),
                              config.num_virtual_tokens)
    rename_parameters(model)
    return [path]


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
