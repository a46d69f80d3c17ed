"""NEFTune's embedding (ms-swift ``NEFTune``): the table's output plus, in training only, uniform noise in
``+-noise_alpha / sqrt(seq_len * hidden)``; in evaluation and generation the embedding is unchanged. It adds
no tensors: the model trains in full (SWIFT saves the whole state)."""
import math
from typing import Dict

from mindspore import nn, ops

from ...models.common.layers import Embedding
from ..tuner_layer import AdapterState, UnmergeableEmbedding


class NEFTuneEmbedding(nn.Cell, UnmergeableEmbedding):
    """An Embedding (its table reused) that adds NEFTune noise while training."""

    merge_refusal = "NEFTune adds noise while training; there is nothing to merge"

    def __init__(self, base: Embedding, state: AdapterState):
        super().__init__()
        if not isinstance(base, Embedding):
            raise TypeError(f"NEFTune perturbs an Embedding, not {type(base).__name__}")
        self._init_tuner_layer(state)
        self.weight = base.weight
        self.gather = ops.Gather()
        self.alphas: Dict[str, float] = {}

    def add_adapter(self, name: str, noise_alpha: float) -> None:
        if self.adapter_names:
            raise ValueError("NEFTune does not support a second NEFTune tuner on the same model (SWIFT neither)")
        self.alphas[name] = noise_alpha
        self.adapter_names.append(name)

    def delete_adapter(self, name: str) -> None:
        self.alphas.pop(name)
        self.adapter_names.remove(name)

    def construct(self, ids):
        out = self.gather(self.weight, ids, 0)
        running = self.running_adapters()
        if self.training and running:
            bound = self.alphas[running[0]] / math.sqrt(out.shape[-1] * out.shape[-2])
            out = out + (ops.rand_like(out) * 2.0 - 1.0) * bound
        return out
