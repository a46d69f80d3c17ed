"""Adding a prompt-tuning adapter (PEFT's ``PromptEmbedding``): the model's input embedding gets a prompt table
initialised as the config says, and the model puts the virtual tokens before every input."""
from typing import List, Optional

import numpy as np
from mindspore import nn

from ...models.common.layers import Embedding
from ..tuner_layer import AdapterState, rename_parameters, replace_module
from .config import PromptTuningConfig
from .layer import PromptEmbedding


def input_embedding(model: nn.Cell):
    """(path, cell) of the model's token embedding: the table its stack's ``embedding_weight`` reads."""
    stack = getattr(model, "stack", None)
    if stack is None or not hasattr(model, "virtual_tokens"):
        raise TypeError(f"prompt tuning needs a causal LM of this package, not {type(model).__name__}")
    weight = stack().embedding_weight()
    for path, cell in model.cells_and_names():
        if isinstance(cell, (Embedding, PromptEmbedding)) and cell.weight is weight:
            return path, cell
    raise TypeError(f"{type(model).__name__} has no token embedding to extend")


def initial_prompt(config: PromptTuningConfig, table: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = config.num_virtual_tokens
    if config.prompt_tuning_init == "RANDOM":
        return rng.standard_normal((n, table.shape[1]))
    if config.prompt_tuning_init == "SAMPLE_VOCAB":
        return table[rng.integers(0, table.shape[0], n)]
    from ...auto import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_name_or_path, **(config.tokenizer_kwargs or {}))
    ids = list(tokenizer(config.prompt_tuning_init_text)["input_ids"])
    ids = (ids * (n // len(ids) + 1))[:n]  # PEFT: repeat the text's ids to length, then cut
    return table[np.array(ids)]


def inject_prompt_tuning(model: nn.Cell, config: PromptTuningConfig, adapter_name: str, state: AdapterState,
                         seed: Optional[int] = None) -> List[str]:
    path, embedding = input_embedding(model)
    hidden = embedding.weight.shape[1]
    if config.token_dim not in (None, hidden):
        raise ValueError(f"token_dim {config.token_dim} does not match the model's hidden size {hidden}")
    config.token_dim = hidden
    config.num_attention_heads = config.num_attention_heads or model.config.num_attention_heads
    config.num_layers = config.num_layers or model.config.num_hidden_layers
    if not isinstance(embedding, PromptEmbedding):
        embedding = PromptEmbedding(embedding, state)
        replace_module(model, path, embedding)
        object.__setattr__(model, "_virtual_tokens_from", embedding)
    if seed is None:
        import mindspore as ms

        seed = ms.get_seed()
    embedding.add_adapter(adapter_name, initial_prompt(config, embedding.weight.asnumpy(), np.random.default_rng(seed)))
    rename_parameters(model)
    return [path]
