"""LLaMA-Adapter's gated attention to a prompt (PEFT's ``AdaptedAttention``): per adapter

    out = attention(q, k, v) + gate * softmax(q k_p^T / sqrt(head_dim)) v_p

with ``k_p = k_proj(P)`` and ``v_p = v_proj(P)`` of the trained prompt ``adaption_prompt`` P [1, len, hidden]
(no rotary positions on them; key/value heads grouped onto the query heads as the layer groups its own),
``adaption_gate`` [1] (zero at first) and the softmax over the prompt alone. The layer's ``o_proj`` then
maps both, as PEFT applies it to the prompt's output (models whose o_proj has a bias are refused: PEFT adds
that bias a second time).
"""
import numpy as np
import mindspore as ms
from mindspore import nn, ops

from ...models.common.attention import grouped_attention, split_heads
from ...models.common.layers import cast
from ..lora.layer import _Vector
from ..attention import AttentionTuner

SLOTS = ("adaption_prompt", "adaption_gate")


class AdaptedAttention(AttentionTuner):
    """An attention layer's gated prompts by adapter name; uses the layer's own ``k_proj`` / ``v_proj``."""

    slots = SLOTS

    def __init__(self, attention, state):
        super().__init__(attention, state)
        self.k_proj, self.v_proj = attention.k_proj, attention.v_proj  # shared with the attention layer
        self.adaption_prompt = nn.CellDict()
        self.adaption_gate = nn.CellDict()

    def add_adapter(self, name: str, length: int, hidden: int, rng: np.random.Generator) -> None:
        dtype = self.k_proj.weight.dtype
        self.adaption_prompt[name] = _Vector(rng.standard_normal((1, length, hidden)), dtype)
        self.adaption_gate[name] = _Vector(np.zeros(1), dtype)
        if name not in self.adapter_names:
            self.adapter_names.append(name)

    def delete_adapter(self, name: str) -> None:
        for cells in (self.adaption_prompt, self.adaption_gate):
            del cells[name]
        self.adapter_names.remove(name)

    def attend(self, name, q, k, v, bias):
        out = grouped_attention(q, k, v, bias, self.scale, self.dropout, self.softmax)
        prompt = self.adaption_prompt[name].weight
        batch, heads, q_len, head_dim = q.shape
        kv_heads, n_rep = self.num_kv_heads, heads // self.num_kv_heads
        length = prompt.shape[1]
        shape = (batch, kv_heads, length, head_dim)
        prompt_k = split_heads(self.k_proj(prompt), kv_heads, head_dim).broadcast_to(shape)
        prompt_v = split_heads(self.v_proj(prompt), kv_heads, head_dim).broadcast_to(shape)
        grouped = q.reshape(batch, kv_heads, n_rep * q_len, head_dim)  # query head h uses kv head h // n_rep
        scores = cast(ops.BatchMatMul(transpose_b=True)(grouped, prompt_k), ms.float32) * self.scale
        probs = cast(ops.softmax(scores, -1), q.dtype) * self.adaption_gate[name].weight.astype(q.dtype)
        return out + ops.matmul(probs, prompt_v).reshape(batch, heads, q_len, head_dim)
