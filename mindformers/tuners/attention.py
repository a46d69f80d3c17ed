"""Tuners that compute an attention layer's attention (prefix tuning, adaption prompt, LongLoRA's shifted
groups): a cell in the ``tuner`` slot of :class:`~mindformers.models.common.attention.Attention`, called as
``tuner(q, k, v, bias)`` after the rotary positions and the KV cache, in place of ``grouped_attention``."""
from typing import List, Tuple

from mindspore import nn

from ..models.common.attention import Attention, HostAttentionSoftmax, grouped_attention
from .tuner_layer import AdapterState, Unmergeable


class AttentionTuner(nn.Cell, Unmergeable):
    """A tuner layer in an attention's ``tuner`` slot: ``construct(q, k, v, bias)`` -> the attention output
    [batch, heads, q_len, head_dim] with the running adapter (one runs at a time), or plain grouped attention
    when none runs. Subclasses implement ``attend(name, q, k, v, bias)``."""

    merge_refusal = "it changes the attention, not the weights"

    def __init__(self, attention: Attention, state: AdapterState):
        super().__init__()
        self._init_tuner_layer(state)
        self.scale = attention.scale
        self.dropout = attention.dropout
        # the attention's own softmax path (host kernel for float32 on CPU), so an idle tuner changes nothing
        self.softmax = HostAttentionSoftmax(self.scale) if attention.host_softmax is not None else None
        self.num_heads, self.num_kv_heads, self.head_dim = attention.num_heads, attention.num_kv_heads, attention.head_dim

    def running_prompt(self):
        running = self.running_adapters()
        if len(running) > 1:
            raise ValueError(f"{type(self).__name__} runs one adapter at a time; active: {list(running)}")
        return running[0] if running else None

    def construct(self, q, k, v, bias):
        name = self.running_prompt()
        if name is None:
            return grouped_attention(q, k, v, bias, self.scale, self.dropout, self.softmax)
        return self.attend(name, q, k, v, bias)

    def unwrap(self):
        return None  # the attention's tuner slot is empty again


def attention_layers(model: nn.Cell, method: str) -> List[Tuple[str, Attention]]:
    """(path, Attention) of every attention layer of ``model``, in order; a layer of another kind is an error
    naming it (these methods work on grouped-query attention with rotary positions)."""
    found = []
    for path, cell in model.cells_and_names():
        if path.endswith("self_attn") or path.endswith(".attn") or path.endswith(".attention"):
            if not isinstance(cell, Attention):
                raise TypeError(f"{method} works on Llama-style attention layers; {path} is a {type(cell).__name__}")
            found.append((path, cell))
    if not found:
        raise TypeError(f"{method} found no attention layer in {type(model).__name__}")
    return found


def install(attention: Attention, kind: type, path: str, *args):
    """``attention``'s tuner of class ``kind``, installed on first use; another kind there is an error."""
    if attention.tuner is None:
        attention.tuner = kind(attention, *args)
    elif not isinstance(attention.tuner, kind):
        raise ValueError(f"{path} already holds a {type(attention.tuner).__name__}; {kind.__name__} cannot share an "
                         "attention layer with another method that computes the attention")
    return attention.tuner
