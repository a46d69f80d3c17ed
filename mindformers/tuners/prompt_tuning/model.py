"""Adding a prompt-tuning adapter (PEFT's ``PromptEmbedding``): the model's input embedding gets a prompt table
initialised as the config says, and the model puts the virtual tokens before every input."""
from typing import List, Optional

import numpy as np
from mindspore import nn

from ..prompt_learning import input_embedding, prompt_embedding
from ..targets import seeded_rng
from ..tuner_layer import AdapterState, rename_parameters
from .config import PromptTuningConfig


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
    embedding = prompt_embedding(model, config, state)
    embedding.add_adapter(adapter_name, initial_prompt(config, embedding.weight.asnumpy(), seeded_rng(seed)))
    rename_parameters(model)
    return [input_embedding(model)[0]]
