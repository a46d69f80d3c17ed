"""Attention shared by the model families: masks, grouped-query attention and the static KV cache.

The KV cache is preallocated with a fixed shape ``[batch, kv_heads, max_len, head_dim]`` per layer and held
in Parameters that each forward pass updates in place (``ops.scatter_nd_update``). A decode step therefore
costs the same at every length and a compiled step is reused for every token (a growing, concatenated
cache would be recompiled each step; see docs/mindspore_cpu.md). Every row has its own write slots,
so rows of one batch may sit at different lengths.
"""
from typing import Optional

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from .layers import cast

NEG_INF = float(np.finfo(np.float32).min)


def attention_bias(attention_mask, query_slots, batch: int, q_len: int, k_len: int):
    """Additive attention bias combining causality and padding.

    Args:
        attention_mask: ``[batch, k_len]``, 1 for key slots holding real tokens, 0 for padding or empty
            cache slots; or None (all real).
        query_slots: ``[batch, q_len]`` slot of each query among the keys, or None for the last ``q_len``.
    Returns:
        ``[batch, 1, q_len, k_len]`` float32: 0 where a query may attend, the most negative float elsewhere.
    """
    k_pos = ops.arange(0, k_len).reshape(1, 1, 1, k_len)
    if query_slots is None:
        q_pos = ops.arange(k_len - q_len, k_len).reshape(1, 1, q_len, 1)
    else:
        q_pos = query_slots.reshape(batch, 1, q_len, 1)
    allowed = k_pos <= q_pos
    if attention_mask is not None:
        allowed = ops.logical_and(allowed, attention_mask.reshape(batch, 1, 1, k_len).astype(ms.bool_))
    allowed = allowed.broadcast_to((batch, 1, q_len, k_len))
    return ops.where(allowed, ops.zeros((), ms.float32), ops.full((), NEG_INF, dtype=ms.float32))


def split_heads(x, heads: int, head_dim: int):
    """[batch, seq, heads * head_dim] -> [batch, heads, seq, head_dim]. A single decode token needs only
    a reshape, which saves a transpose kernel per projection and layer."""
    batch, seq = x.shape[0], x.shape[1]
    if seq == 1:
        return x.reshape(batch, heads, 1, head_dim)
    return x.reshape(batch, seq, heads, head_dim).swapaxes(1, 2)


def merge_heads(x):
    """[batch, heads, seq, head_dim] -> [batch, seq, heads * head_dim] (inverse of :func:`split_heads`)."""
    batch, heads, seq, head_dim = x.shape
    if seq == 1:
        return x.reshape(batch, 1, heads * head_dim)
    return x.swapaxes(1, 2).reshape(batch, seq, heads * head_dim)


def grouped_attention(q, k, v, bias, scale: float, dropout: Optional[nn.Cell] = None):
    """softmax(q k^T * scale + bias) v for grouped-query attention, softmax in float32.

    Query head ``h`` uses key/value head ``h // (heads / kv_heads)`` (Hugging Face's ``repeat_kv`` grouping);
    the query heads of a group are folded into the sequence axis instead of copying k and v.

    Args:
        q: [batch, heads, q_len, head_dim]; k, v: [batch, kv_heads, k_len, head_dim];
        bias: [batch, 1, q_len, k_len].
    Returns:
        [batch, heads, q_len, head_dim]
    """
    batch, heads, q_len, head_dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    n_rep = heads // kv_heads
    q = q.reshape(batch, kv_heads, n_rep * q_len, head_dim)
    scores = cast(ops.BatchMatMul(transpose_b=True)(q, k), ms.float32) * scale
    scores = scores.reshape(batch, kv_heads, n_rep, q_len, k_len) + bias.reshape(batch, 1, 1, q_len, k_len)
    probs = cast(ops.softmax(scores, -1), v.dtype).reshape(batch, kv_heads, n_rep * q_len, k_len)
    if dropout is not None:
        probs = dropout(probs)
    return ops.matmul(probs, v).reshape(batch, heads, q_len, head_dim)


def cache_write_index(cache_slots, kv_heads: int, cache_rows=None):
    """Scatter indices writing ``[batch, kv_heads, seq, head_dim]`` keys into slots ``cache_slots`` [batch, seq].

    Args:
        cache_rows: [batch] cache row of each input row (a serving engine's rows); None: row i is row i.
    Returns:
        int32 ``[batch, kv_heads, seq, 3]`` of (row, head, slot).
    """
    batch, seq = cache_slots.shape
    rows = ops.arange(batch) if cache_rows is None else cache_rows
    rows = rows.astype(ms.int32).reshape(batch, 1, 1).broadcast_to((batch, kv_heads, seq))
    heads = ops.arange(kv_heads).astype(ms.int32).reshape(1, kv_heads, 1).broadcast_to((batch, kv_heads, seq))
    slots = cache_slots.astype(ms.int32).reshape(batch, 1, seq).broadcast_to((batch, kv_heads, seq))
    return ops.stack((rows, heads, slots), -1)


def update_cache(k_cache, v_cache, k, v, write_index, cache_rows=None):
    """Write this step's keys/values into the layer's cache in place; return the cache tensors of the
    input rows (all rows, or the rows ``cache_rows`` [batch] picks)."""
    k_cache = ops.depend(k_cache, ops.scatter_nd_update(k_cache, write_index, k))
    v_cache = ops.depend(v_cache, ops.scatter_nd_update(v_cache, write_index, v))
    if cache_rows is not None:
        return ops.gather(k_cache, cache_rows, 0), ops.gather(v_cache, cache_rows, 0)
    return k_cache, v_cache


class KVCache(nn.Cell):
    """Preallocated keys and values of every layer: ``2 * num_layers`` Parameters
    ``[batch, kv_heads, max_len, head_dim]`` (layer i: entries 2i and 2i+1).

    Args:
        num_layers, batch, kv_heads, max_len, head_dim: the shape.
        dtype: the model's dtype.
    """

    _instances = 0

    def __init__(self, num_layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int, dtype=ms.float32):
        super().__init__()
        KVCache._instances += 1
        tag = KVCache._instances  # parameter names must be unique across live caches
        shape = (batch, kv_heads, max_len, head_dim)
        self.shape = shape
        self.tensors = ms.ParameterTuple([
            Parameter(Tensor(np.zeros(shape, np.float32), dtype=dtype), name=f"kv_cache{tag}.{i}", requires_grad=False)
            for i in range(2 * num_layers)
        ])

    @property
    def batch(self) -> int:
        return self.shape[0]

    @property
    def max_len(self) -> int:
        return self.shape[2]
