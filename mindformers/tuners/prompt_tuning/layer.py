"""The embedding of a prompt-tuned model: the base table for ids below ``vocab_size``, the running adapter's
prompt table (``prompt_embeddings.<name>.weight`` [num_virtual_tokens, hidden]) for the virtual ids after it
(:attr:`DecoderForCausalLM.virtual_tokens` puts them before every input)."""
from typing import Iterable

import numpy as np
from mindspore import nn, ops

from ...models.common.layers import Embedding
from ..lora.layer import _Vector
from ..tuner_layer import AdapterState, TunerLayer


class PromptEmbedding(nn.Cell, TunerLayer):
    """``Embedding`` plus prompt tables by adapter name (one runs at a time)."""

    def __init__(self, base: Embedding, state: AdapterState):
        super().__init__()
        if not isinstance(base, Embedding):
            raise TypeError(f"prompt tuning extends an Embedding, not {type(base).__name__}")
        self._init_tuner_layer(state)
        self.weight = base.weight
        self.prompt_embeddings = nn.CellDict()
        self.gather = ops.Gather()

    def add_adapter(self, name: str, value: np.ndarray) -> None:
        self.prompt_embeddings[name] = _Vector(value, self.weight.dtype)
        if name not in self.adapter_names:
            self.adapter_names.append(name)

    def delete_adapter(self, name: str) -> None:
        del self.prompt_embeddings[name]
        self.adapter_names.remove(name)

    def running_prompt(self):
        running = self.running_adapters()
        if len(running) > 1:
            raise ValueError(f"prompt tuning runs one adapter at a time; active: {list(running)}")
        return running[0] if running else None

    def virtual_tokens(self) -> int:
        name = self.running_prompt()
        return 0 if name is None else int(self.prompt_embeddings[name].weight.shape[0])

    def construct(self, ids):
        name = self.running_prompt()
        if name is None:
            return self.gather(self.weight, ids, 0)
        table = ops.concat((self.weight, self.prompt_embeddings[name].weight), 0)
        return self.gather(table, ids, 0)

    def merge(self, names: Iterable[str]) -> None:
        raise ValueError("prompt tuning adds inputs; it cannot be merged into the weights")

    def unmerge(self) -> None:
        return None

    def unwrap(self) -> Embedding:
        base = Embedding(*self.weight.shape, self.weight.dtype)
        base.weight = self.weight
        return base
