"""Prefix tuning in the attention layers (PEFT's ``PrefixEncoder`` and what transformers does with the past
key values it gives): every layer's keys and values start with the adapter's prefix.

The prefix of all layers is one table [num_virtual_tokens, num_layers * 2 * kv_heads * head_dim], viewed as
[n, layers, 2, kv_heads, head_dim]: layer l's keys are ``[:, l, 0]`` and its values ``[:, l, 1]``. They get no
rotary positions (they enter as a filled KV cache) and every query sees them; the input's own tokens take
positions n, n+1, ... (:attr:`~mindformers.models.common.decoder.DecoderForCausalLM.prefix_positions`).
"""
import numpy as np
from mindspore import nn, ops

from ...models.common.attention import grouped_attention
from ..lora.layer import _Vector
from ..attention import AttentionTuner
from ..prompt_learning import default_linear


class PrefixEncoder(nn.Cell):
    """``construct()`` -> the prefix table [n, layers * 2 * token_dim]: a trained table (``embedding``), or with
    ``prefix_projection`` while training a table [n, token_dim] through ``transform`` (Linear-Tanh-Linear)."""

    def __init__(self, config, rng: np.random.Generator, dtype):
        super().__init__()
        n, width = config.num_virtual_tokens, config.num_layers * 2 * config.token_dim
        self.project = config.prefix_projection and not config.inference_mode
        if self.project:
            self.embedding = _Vector(rng.standard_normal((n, config.token_dim)), dtype)
            self.transform = nn.SequentialCell([default_linear(config.token_dim, config.encoder_hidden_size, rng, dtype),
                                                nn.Tanh(), default_linear(config.encoder_hidden_size, width, rng, dtype)])
        else:
            self.embedding = _Vector(rng.standard_normal((n, width)), dtype)
        if config.init_weights == "zero":  # PEFT zeroes what gives the prefix: the table or the last layer
            last = self.transform[2] if self.project else self.embedding
            for param in last.get_parameters():
                param.set_data(ops.zeros(param.shape, param.dtype))

    def construct(self):
        if self.project:
            return self.transform(self.embedding.weight)
        return self.embedding.weight


class PrefixAttention(AttentionTuner):
    """Layer ``layer_idx``'s attention with the running adapter's prefix keys/values in front. The adapters'
    encoders are shared by every layer (``prefix_encoder.<adapter>``)."""

    slots = ("prefix_encoder",)

    def __init__(self, attention, layer_idx: int, num_layers: int, state):
        super().__init__(attention, state)
        self.layer_idx, self.num_layers = layer_idx, num_layers
        self.prefix_encoder = nn.CellDict()
        self.lengths = {}

    def add_adapter(self, name: str, encoder: PrefixEncoder, length: int) -> None:
        self.prefix_encoder[name] = encoder
        self.lengths[name] = length
        if name not in self.adapter_names:
            self.adapter_names.append(name)

    def delete_adapter(self, name: str) -> None:
        del self.prefix_encoder[name]
        self.lengths.pop(name)
        self.adapter_names.remove(name)

    def prompt(self, name: str):
        """Adapter ``name``'s table [n, layers * 2 * kv_heads * head_dim]."""
        return self.prefix_encoder[name]()

    def prefix_positions(self) -> int:
        name = self.running_prompt()
        return 0 if name is None else self.lengths[name]

    def prefix(self, table, layer: int, batch: int):
        """Layer ``layer``'s prefix keys and values from ``table``: [batch, kv_heads, n, head_dim] each."""
        n = table.shape[0]
        kv = table.reshape(n, self.num_layers, 2, self.num_kv_heads, self.head_dim)[:, layer]
        shape = (batch, self.num_kv_heads, n, self.head_dim)
        return (kv[:, 0].swapaxes(0, 1).expand_dims(0).broadcast_to(shape),
                kv[:, 1].swapaxes(0, 1).expand_dims(0).broadcast_to(shape))

    def past_key_values(self, name: str, batch: int):
        """Every layer's ``(key, value)`` prefix for a batch (PEFT's ``get_prompt`` of prefix tuning)."""
        table = self.prompt(name)
        return tuple(self.prefix(table, layer, batch) for layer in range(self.num_layers))

    def attend(self, name, q, k, v, bias):
        table = self.prompt(name).astype(k.dtype)
        n, batch = table.shape[0], q.shape[0]
        seen = ops.zeros((batch, 1, bias.shape[2], n), bias.dtype)  # every query sees the prefix
        # beside k and v, not concatenated with them: in a decode step they are the whole KV cache
        return grouped_attention(q, k, v, ops.concat((seen, bias), 3), self.scale, self.dropout,
                                 self.softmax, prefix=self.prefix(table, self.layer_idx, batch))
