"""Shifted sparse attention (S2-Attn, LongLoRA section 3.2), used while training only: the sequence is cut into
groups of ``g = int(seq * group_size_ratio)`` tokens and each query attends causally within its group; the
second half of the heads uses groups shifted by ``g / 2`` (boundaries at g/2, 3g/2, ...), so information
flows between neighbouring groups. Outside training the attention is the full causal one, which is what the
method promises: fine-tune short, infer long.

Groups as LongLoRA's flash-attention kernel forms them (``cu_seqlens`` at multiples of g, and at g/2 plus
multiples of g for the shifted half): the shifted half's last group does not wrap around to the start of the
sequence, as the roll in its non-flash version does. Key/value heads are repeated onto the query heads first,
so an odd number of heads or of key/value heads splits like the query heads do (the first ``heads // 2``
are unshifted).
"""
from mindspore import ops

from ...models.common.attention import grouped_attention
from ..attention import AttentionTuner


def s2_groups(seq: int, group: int, shifted: bool):
    """(start, end) of each attention group of a ``seq``-token row: boundaries at multiples of ``group``, or
    at ``group / 2`` plus multiples of it for the shifted heads."""
    edges = [0] + list(range(group // 2 if shifted else group, seq, group)) + [seq]
    return list(zip(edges[:-1], edges[1:]))


class ShiftedSparseAttention(AttentionTuner):
    """S2-Attn while training with a LongLoRA adapter running; full attention otherwise."""

    def __init__(self, attention, state):
        super().__init__(attention, state)
        self.ratios = {}

    def add_adapter(self, name: str, group_size_ratio: float) -> None:
        self.ratios[name] = group_size_ratio
        if name not in self.adapter_names:
            self.adapter_names.append(name)

    def delete_adapter(self, name: str) -> None:
        self.ratios.pop(name)
        self.adapter_names.remove(name)

    def merge(self, names) -> None:
        return None  # nothing to fold: inference uses the full attention anyway

    def attend(self, name, q, k, v, bias):
        if not self.training:
            return grouped_attention(q, k, v, bias, self.scale, self.dropout, self.softmax)
        batch, heads, seq, head_dim = q.shape
        group = int(seq * self.ratios[name])
        if group < 2:
            raise ValueError(f"LongLoRA: a {seq}-token sequence with group_size_ratio {self.ratios[name]} gives groups "
                             f"of {group} tokens; S2-Attn needs at least 2 (use longer rows or a larger ratio)")
        n_rep = heads // self.num_kv_heads
        if n_rep > 1:  # [batch, kv_heads, seq, d] -> [batch, heads, seq, d], query head h reading kv head h // n_rep
            k = k.expand_dims(2).broadcast_to((batch, self.num_kv_heads, n_rep, seq, head_dim)).reshape(batch, heads, seq, head_dim)
            v = v.expand_dims(2).broadcast_to((batch, self.num_kv_heads, n_rep, seq, v.shape[-1])).reshape(
                batch, heads, seq, v.shape[-1])
        half = heads // 2
        outs = []
        for first, last, shifted in ((0, half, False), (half, heads, True)):
            parts = [grouped_attention(q[:, first:last, a:b], k[:, first:last, a:b], v[:, first:last, a:b],
                                       bias[:, :, a:b, a:b], self.scale, self.dropout, self.softmax)
                     for a, b in s2_groups(seq, group, shifted)]
            outs.append(ops.concat(parts, 2))
        return ops.concat(outs, 1)
