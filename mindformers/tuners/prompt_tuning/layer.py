"""The embedding of a prompt-tuned model: the base table for ids below ``vocab_size``, the running adapter's
prompt table (``prompt_embeddings.<name>.weight`` [num_virtual_tokens, hidden]) for the virtual ids after it
(:attr:`DecoderForCausalLM.virtual_tokens` puts them before every input)."""
from typing import Dict, Iterable

import numpy as np
from mindspore import nn, ops

from ...models.common.layers import Embedding
from ..lora.layer import _Vector
from ..tuner_layer import AdapterState, TunerLayer


class PromptEmbedding(nn.Cell, TunerLayer):
    """``Embedding`` plus prompts by adapter name (one runs at a time): a trained table
    (``prompt_embeddings.<name>.weight``: prompt tuning, or a p-tuning prompt loaded for inference) or an
    encoder computing the table (``prompt_encoder.<name>``: p-tuning while it trains)."""

    def __init__(self, base: Embedding, state: AdapterState):
        super().__init__()
        if not isinstance(base, Embedding):
            raise TypeError(f"prompt learning extends an Embedding, not {type(base).__name__}")
        self._init_tuner_layer(state)
        self.weight = base.weight
        self.prompt_embeddings = nn.CellDict()
        self.prompt_encoder = nn.CellDict()
        self.lengths: Dict[str, int] = {}
        self.gather = ops.Gather()

    def add_adapter(self, name: str, value: np.ndarray) -> None:
        """A prompt table [num_virtual_tokens, hidden] for adapter ``name``."""
        self.prompt_embeddings[name] = _Vector(value, self.weight.dtype)
        self._added(name, value.shape[0])

    def add_encoder(self, name: str, encoder: nn.Cell, length: int) -> None:
        """An encoder cell whose ``construct()`` gives adapter ``name``'s table."""
        self.prompt_encoder[name] = encoder
        self._added(name, length)

    def _added(self, name: str, length: int) -> None:
        self.lengths[name] = length
        if name not in self.adapter_names:
            self.adapter_names.append(name)

    def delete_adapter(self, name: str) -> None:
        for cells in (self.prompt_embeddings, self.prompt_encoder):
            if name in cells:
                del cells[name]
        self.lengths.pop(name)
        self.adapter_names.remove(name)

    def running_prompt(self):
        running = self.running_adapters()
        if len(running) > 1:
            raise ValueError(f"prompt learning runs one adapter at a time; active: {list(running)}")
        return running[0] if running else None

    def virtual_tokens(self) -> int:
        name = self.running_prompt()
        return 0 if name is None else self.lengths[name]

    def prompt(self, name: str):
        """Adapter ``name``'s table [num_virtual_tokens, hidden]."""
        if name in self.prompt_encoder:
            return self.prompt_encoder[name]()
        return self.prompt_embeddings[name].weight

    def construct(self, ids):
        name = self.running_prompt()
        if name is None:
            return self.gather(self.weight, ids, 0)
        table = ops.concat((self.weight, self.prompt(name).astype(self.weight.dtype)), 0)
        return self.gather(table, ids, 0)

    def merge(self, names: Iterable[str]) -> None:
        raise ValueError("prompt learning adds inputs; it cannot be merged into the weights")

    def unmerge(self) -> None:
        return None

    def unwrap(self) -> Embedding:
        base = Embedding(*self.weight.shape, self.weight.dtype)
        base.weight = self.weight
        return base
