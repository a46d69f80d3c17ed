"""What the prompt-learning methods (prompt tuning, p-tuning) share, as PEFT's ``PromptLearningConfig``: their
config fields, and the model's token embedding extended by a prompt per adapter. The prompt is a trained table
(``prompt_embeddings.<name>.weight`` [num_virtual_tokens, hidden]) or an encoder computing it
(``prompt_encoder.<name>``); the embedding looks up ids below ``vocab_size`` in the model's table and the
virtual ids after it in the running adapter's prompt, and the model puts those virtual ids before every input
(:attr:`~mindformers.models.common.decoder.DecoderForCausalLM.virtual_tokens`).
Methods that prompt the attention layers instead (prefix tuning's keys and values, LLaMA-Adapter's gated
prompt) are :class:`~mindformers.tuners.attention.AttentionTuner` s."""
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from ..models.common.layers import Embedding, Linear
from .config import TunerConfig
from .lora.layer import _kaiming_uniform, _Vector
from .tuner_layer import AdapterState, UnmergeableEmbedding, replace_module


@dataclass
class PromptLearningConfig(TunerConfig):
    """Fields of every prompt-learning method (PEFT's ``PromptLearningConfig``)."""

    num_virtual_tokens: int = 20
    """How many virtual tokens precede each input."""
    token_dim: Optional[int] = None
    """Their width (the model's hidden size; filled in when the adapter is added)."""
    num_transformer_submodules: Optional[int] = 1
    """1 for decoder-only models (PEFT's field)."""
    num_attention_heads: Optional[int] = None
    """Recorded for PEFT (filled in)."""
    num_layers: Optional[int] = None
    """Recorded for PEFT (filled in)."""
    modules_to_save: Optional[list] = None
    """Extra modules trained in full and saved with the adapter."""

    def __post_init__(self):
        if self.num_virtual_tokens <= 0:
            raise ValueError(f"num_virtual_tokens must be positive, found {self.num_virtual_tokens}")


class PromptEmbedding(nn.Cell, UnmergeableEmbedding):
    """``Embedding`` plus prompts by adapter name (one runs at a time): a trained table
    (``prompt_embeddings.<name>.weight``: prompt tuning, or a p-tuning prompt loaded for inference) or an
    encoder computing the table (``prompt_encoder.<name>``: p-tuning while it trains)."""

    merge_refusal = "prompt learning adds inputs; it cannot be merged into the weights"

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


def default_linear(fan_in: int, out: int, rng: np.random.Generator, dtype) -> Linear:
    """A biased Linear initialised as torch's ``nn.Linear`` (Kaiming-uniform weight, uniform bias), as PEFT's
    prompt encoders start."""
    layer = Linear(fan_in, out, True, dtype)
    bound = 1.0 / np.sqrt(fan_in)
    layer.weight.set_data(ms.Tensor(_kaiming_uniform(rng, (out, fan_in)).astype(np.float32), dtype))
    layer.bias.set_data(ms.Tensor(rng.uniform(-bound, bound, (out,)).astype(np.float32), dtype))
    return layer


def input_embedding(model: nn.Cell):
    """(path, cell) of the model's token embedding: the table its stack's ``embedding_weight`` reads."""
    stack = getattr(model, "stack", None)
    if stack is None or not hasattr(model, "virtual_tokens"):
        raise TypeError(f"prompt learning needs a causal LM of this package, not {type(model).__name__}")
    weight = stack().embedding_weight()
    for path, cell in model.cells_and_names():
        if isinstance(cell, (Embedding, PromptEmbedding)) and cell.weight is weight:
            return path, cell
    raise TypeError(f"{type(model).__name__} has no token embedding to extend")


def prompt_embedding(model: nn.Cell, config: PromptLearningConfig, state: AdapterState) -> PromptEmbedding:
    """The model's token embedding as a :class:`PromptEmbedding` (installed once), with ``config``'s fields
    PEFT records filled in from the model."""
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
    return embedding
