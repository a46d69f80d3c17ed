"""Attention shared by the model families: masks, grouped-query attention and the static KV cache.

The KV cache is preallocated with a fixed shape ``[batch, kv_heads, max_len, head_dim]`` per layer and held
in Parameters that each forward pass updates in place (``ops.scatter_nd_update``, or on CPU a host kernel
that writes only the new slots). A compiled step is reused for every token (a growing, concatenated cache
would be recompiled each step; see docs/mindspore_cpu.md). Every row has its own write slots,
so rows of one batch may sit at different lengths.
"""
from typing import Optional

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from ...kernels import host
from ...registry import BLOCKS
from .layers import MS_DTYPES, HostRotary, Linear, RMSNorm, apply_rotary, arange, cast, full

NEG_INF = float(np.finfo(np.float32).min)


def attention_bias(attention_mask, query_slots, batch: int, q_len: int, k_len: int, window: Optional[int] = None):
    """Additive attention bias combining causality, padding and an optional sliding window.

    Args:
        attention_mask: ``[batch, k_len]``, 1 for key slots holding real tokens, 0 for padding or empty
            cache slots; or None (all real).
        query_slots: ``[batch, q_len]`` slot of each query among the keys, or None for the last ``q_len``.
        window: sliding-window length (Mistral): a query sees itself and the ``window - 1`` real tokens
            before it. Distances count real tokens, so a left-padded row sees what it would see alone.
    Returns:
        ``[batch, 1, q_len, k_len]`` float32: 0 where a query may attend, the most negative float elsewhere.
    """
    k_pos = arange(0, k_len).reshape(1, 1, 1, k_len)
    if query_slots is None:
        q_pos = arange(k_len - q_len, k_len).reshape(1, 1, q_len, 1)
    else:
        q_pos = query_slots.reshape(batch, 1, q_len, 1)
    allowed = k_pos <= q_pos
    if attention_mask is not None:
        allowed = ops.logical_and(allowed, attention_mask.reshape(batch, 1, 1, k_len).astype(ms.bool_))
    if window is not None:
        if attention_mask is None:
            k_count, q_count = k_pos, q_pos
        else:  # index of each slot among the row's real tokens
            counts = ops.cumsum(attention_mask.astype(ms.int32), 1)  # [batch, k_len]
            k_count = counts.reshape(batch, 1, 1, k_len)
            if query_slots is None:
                q_count = counts[:, k_len - q_len:].reshape(batch, 1, q_len, 1)
            else:
                q_count = ops.gather_elements(counts, 1, query_slots.astype(ms.int32)).reshape(batch, 1, q_len, 1)
        allowed = ops.logical_and(allowed, (q_count - k_count) < window)
    shape = (batch, 1, q_len, k_len)
    # all three operands in full shape: semi-automatic parallelism has no Select with broadcasting
    return ops.where(allowed.broadcast_to(shape), ops.zeros(shape, ms.float32), full(shape, NEG_INF, ms.float32))


def split_heads(x, heads: int, head_dim: int, swap=None):
    """[batch, seq, heads * head_dim] -> [batch, heads, seq, head_dim]. A single decode token needs only
    a reshape, which saves a transpose kernel per projection and layer. ``swap``: a :class:`HostSwapAxes`
    (CPU) or None (``swapaxes``)."""
    batch, seq = x.shape[0], x.shape[1]
    if seq == 1:
        return x.reshape(batch, heads, 1, head_dim)
    x = x.reshape(batch, seq, heads, head_dim)
    return x.swapaxes(1, 2) if swap is None else swap(x)


def merge_heads(x, swap=None):
    """[batch, heads, seq, head_dim] -> [batch, seq, heads * head_dim] (inverse of :func:`split_heads`)."""
    batch, heads, seq, head_dim = x.shape
    if seq == 1:
        return x.reshape(batch, 1, heads * head_dim)
    return (x.swapaxes(1, 2) if swap is None else swap(x)).reshape(batch, seq, heads * head_dim)


class HostSwapAxes(nn.Cell):
    """``x.swapaxes(1, 2)`` of a 4-D tensor by a host kernel, its own gradient: MindSpore's CPU Transpose
    keeps buffers the size of its tensor for a compiled graph's life (measured: ~250 MB of an 8-layer
    SmolLM2-shaped training step at batch 8 x 128 went to the heads' split and merge)."""

    def construct(self, x):
        return host.swap_axes(x)

    def bprop(self, x, out, dout):
        return (host.swap_axes(dout),)


class _HostSoftmax(nn.Cell):
    """``softmax(scale * scores + bias)`` by the host kernels, forward and backward; the bias (the mask) gets no
    gradient: it is never trained here."""

    def __init__(self, scale: Tensor):
        super().__init__()
        self.scale = scale

    def construct(self, scores, bias):
        return host.softmax_bias(scores, bias, self.scale)

    def bprop(self, scores, bias, out, dout):
        return host.softmax_bias_grad(dout, out, self.scale), ops.zeros_like(bias)


class _HostAttentionCore(nn.Cell):
    """``softmax(scale * q k^T + bias) v`` for grouped heads, returning ``(out, probs)``, with its gradient
    written out: MindSpore's autodiff of the two batched products transposes the probabilities and the
    queries (Transpose kernels, whose buffers a compiled graph keeps for its life; measured ~6 MB a layer of
    a SmolLM2 LoRA step at batch 4 x 128, and slower), where ``BatchMatMul(transpose_a=True)`` reads them
    as they are. The forward pass is :func:`grouped_attention`'s own ops (same numbers)."""

    def __init__(self, scale: Tensor):
        super().__init__()
        self.scale = scale
        self.product = ops.BatchMatMul()
        self.product_nt = ops.BatchMatMul(transpose_b=True)
        self.product_tn = ops.BatchMatMul(transpose_a=True)

    def construct(self, q, k, v, bias):
        batch, heads, q_len, head_dim = q.shape
        kv_heads, k_len = k.shape[1], k.shape[2]
        grouped = (batch, kv_heads, heads // kv_heads * q_len)
        scores = self.product_nt(q.reshape(grouped + (head_dim,)), k)
        probs = host.softmax_bias(scores.reshape(batch, heads, q_len, k_len), bias, self.scale)
        probs = probs.reshape(grouped + (k_len,))
        return self.product(probs, v).reshape(batch, heads, q_len, v.shape[-1]), probs

    def bprop(self, q, k, v, bias, out, dout):
        batch, heads, q_len, head_dim = q.shape
        kv_heads, k_len = k.shape[1], k.shape[2]
        grouped = (batch, kv_heads, heads // kv_heads * q_len)
        probs = out[1]
        d_out = dout[0].reshape(grouped + (v.shape[-1],))  # the probabilities' own output is never differentiated
        d_v = self.product_tn(probs, d_out)
        d_probs = self.product_nt(d_out, v).reshape(batch, heads, q_len, k_len)
        d_scores = host.softmax_bias_grad(d_probs, probs.reshape(batch, heads, q_len, k_len), self.scale)
        d_scores = d_scores.reshape(grouped + (k_len,))
        d_q = self.product(d_scores, k).reshape(q.shape)
        d_k = self.product_tn(d_scores, q.reshape(grouped + (head_dim,)))
        return d_q, d_k, d_v, ops.zeros_like(bias)


class HostAttentionSoftmax(nn.Cell):
    """The host kernels' path of :func:`grouped_attention` (float32 on CPU): the softmax with its scale and
    mask in one pass each way (MindSpore's scaling, broadcast add and softmax kernels each keep buffers the
    size of the scores for a compiled graph's life), and without a prefix or dropout the whole of
    ``softmax(q k^T) v`` with its gradient written out (``_HostAttentionCore``). An attention built with
    ``host.enabled()`` holds one and hands it to :func:`grouped_attention`.
    """

    def __init__(self, scale: float):
        super().__init__()
        scale = Tensor(np.array([scale], np.float32))
        self.probs = _HostSoftmax(scale)
        self.core = _HostAttentionCore(scale)


def grouped_attention(q, k, v, bias, scale: float, dropout: Optional[nn.Cell] = None, softmax=None,
                      prefix=None):
    """softmax(q k^T * scale + bias) v for grouped-query attention, softmax in float32.

    Query head ``h`` uses key/value head ``h // (heads / kv_heads)`` (Hugging Face's ``repeat_kv`` grouping);
    the query heads of a group are folded into the sequence axis instead of copying k and v.

    Args:
        q: [batch, heads, q_len, head_dim]; k: [batch, kv_heads, k_len, head_dim];
        v: [batch, kv_heads, k_len, v_dim] (v_dim may differ from head_dim, as in MLA);
        bias: [batch, 1, q_len, n + k_len] with a prefix, else [batch, 1, q_len, k_len].
        softmax: a :class:`HostAttentionSoftmax` of this ``scale`` (used for float32 tensors), or None.
        prefix: None, or keys and values that come before k and v (prefix tuning's), ``(pk, pv)`` of
            [batch, kv_heads, n, head_dim] and [batch, kv_heads, n, v_dim]: attention over their
            concatenation, without copying k and v (a decode step's whole KV cache) into one with the prefix.
    Returns:
        [batch, heads, q_len, v_dim]
    """
    fused = softmax is not None and q.dtype == ms.float32 and k.dtype == ms.float32 and v.dtype == ms.float32 \
        and bias.dtype == ms.float32
    if fused and prefix is None and dropout is None:
        return softmax.core(q, k, v, bias)[0]
    batch, heads, q_len, head_dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    n_rep = heads // kv_heads
    q = q.reshape(batch, kv_heads, n_rep * q_len, head_dim)
    scores = ops.BatchMatMul(transpose_b=True)(q, k)  # [batch, kv_heads, n_rep * q_len, k_len]
    if prefix is not None:  # [batch, kv_heads, n_rep * q_len, n + k_len]
        scores = ops.concat((ops.BatchMatMul(transpose_b=True)(q, prefix[0]), scores), -1)
        k_len = scores.shape[-1]
    if fused:
        probs = softmax.probs(scores.reshape(batch, heads, q_len, k_len), bias)
        probs = probs.reshape(batch, kv_heads, n_rep * q_len, k_len)
    else:
        scores = cast(scores, ms.float32) * scale
        scores = scores.reshape(batch, kv_heads, n_rep, q_len, k_len) + bias.reshape(batch, 1, 1, q_len, k_len)
        probs = cast(ops.softmax(scores, -1), v.dtype).reshape(batch, kv_heads, n_rep * q_len, k_len)
    if dropout is not None:
        probs = dropout(probs)
    if prefix is None:
        return ops.matmul(probs, v).reshape(batch, heads, q_len, v.shape[-1])
    n = prefix[1].shape[2]
    out = ops.matmul(probs[..., :n], prefix[1]) + ops.matmul(probs[..., n:], v)
    return out.reshape(batch, heads, q_len, v.shape[-1])


def cache_write_index(cache_slots, kv_heads: int, cache_rows=None):
    """Scatter indices writing ``[batch, kv_heads, seq, head_dim]`` keys into slots ``cache_slots`` [batch, seq].

    Args:
        cache_rows: [batch] cache row of each input row (a serving engine's rows); None: row i is row i.
    Returns:
        int32 ``[batch, kv_heads, seq, 3]`` of (row, head, slot).
    """
    batch, seq = cache_slots.shape
    rows = arange(0, batch) if cache_rows is None else cache_rows
    rows = rows.astype(ms.int32).reshape(batch, 1, 1).broadcast_to((batch, kv_heads, seq))
    heads = arange(0, kv_heads).reshape(1, kv_heads, 1).broadcast_to((batch, kv_heads, seq))
    slots = cache_slots.astype(ms.int32).reshape(batch, 1, seq).broadcast_to((batch, kv_heads, seq))
    return ops.stack((rows, heads, slots), -1)


def update_cache(k_cache, v_cache, k, v, write_index, cache_rows=None, host_write=False):
    """Write this step's keys/values into the layer's cache in place; return the cache tensors of the
    input rows (all rows, or the rows ``cache_rows`` [batch] picks).

    ``host_write`` (the attention's ``host_cache_write``, set at construction from ``host.enabled()``):
    the host kernel writes only the new slots; MindSpore's CPU ScatterNdUpdate copies the whole cache per
    call (with 60 cache tensors of 32 rows, a quarter of a decode step).
    """
    if host_write:
        k_cache = ops.depend(k_cache, host.cache_write(k_cache, k, write_index))
        v_cache = ops.depend(v_cache, host.cache_write(v_cache, v, write_index))
    else:
        k_cache = ops.depend(k_cache, ops.scatter_nd_update(k_cache, write_index, k))
        v_cache = ops.depend(v_cache, ops.scatter_nd_update(v_cache, write_index, v))
    if cache_rows is not None:
        return ops.gather(k_cache, cache_rows, 0), ops.gather(v_cache, cache_rows, 0)
    return k_cache, v_cache


class KVCache(nn.Cell):
    """Preallocated cache of every layer: ``2 * num_layers`` Parameters, layer i's at entries 2i and 2i+1.

    Standard attention keeps keys ``[batch, heads, max_len, k_dim]`` and values ``[batch, heads, max_len,
    v_dim]``; multi-head latent attention keeps its compressed latent and rotary key (one "head" each).

    Args:
        num_layers, batch, heads, max_len, k_dim: the shape; v_dim: the second tensor's last dimension
            (default ``k_dim``).
        dtype: the model's dtype.
    """

    _instances = 0

    def __init__(self, num_layers: int, batch: int, heads: int, max_len: int, k_dim: int,
                 dtype=ms.float32, v_dim: Optional[int] = None):
        super().__init__()
        KVCache._instances += 1
        tag = KVCache._instances  # parameter names must be unique across live caches
        v_dim = k_dim if v_dim is None else v_dim
        self.shape = (batch, heads, max_len, k_dim)
        shapes = [(batch, heads, max_len, k_dim), (batch, heads, max_len, v_dim)]
        self.tensors = ms.ParameterTuple([
            Parameter(Tensor(np.zeros(shapes[i % 2], np.float32), dtype=dtype), name=f"kv_cache{tag}.{i}",
                      requires_grad=False)
            for i in range(2 * num_layers)
        ])

    @classmethod
    def for_model(cls, model, batch: int, max_len: int) -> "KVCache":
        """A zeroed cache of ``batch`` rows x ``max_len`` slots for ``model`` (see ``kv_cache_spec``)."""
        from .layers import MS_DTYPES

        layers, heads, k_dim, v_dim = model.kv_cache_spec()
        return cls(layers, batch, heads, max_len, k_dim, MS_DTYPES[model.config.dtype], v_dim)

    @property
    def batch(self) -> int:
        return self.shape[0]

    @property
    def max_len(self) -> int:
        return self.shape[2]


@BLOCKS.register
class Attention(nn.Cell):
    """Multi-head attention with rotary positions and grouped-query key/value heads (Llama and its kin).

    What a config may vary: ``num_key_value_heads``, ``head_dim`` (may differ from hidden / heads),
    biases (``attention_bias`` on q/k/v/o, ``qkv_bias`` on q/k/v), a per-head RMSNorm of q and k before
    the rotation (``qk_norm``, Qwen3), and a sliding window for layers whose ``layer_type`` is
    ``"sliding_attention"`` (Mistral, Qwen2/3 with ``use_sliding_window``).

    Args:
        config: the model config; layer_idx: which layer this is.
    """

    def __init__(self, config, layer_idx: int):
        super().__init__()
        dtype = MS_DTYPES[config.dtype]
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scale = self.head_dim ** -0.5
        qkv_bias = config.attention_bias or config.qkv_bias
        hidden = config.hidden_size
        self.q_proj = Linear(hidden, self.num_heads * self.head_dim, qkv_bias, dtype)
        self.k_proj = Linear(hidden, self.num_kv_heads * self.head_dim, qkv_bias, dtype)
        self.v_proj = Linear(hidden, self.num_kv_heads * self.head_dim, qkv_bias, dtype)
        self.o_proj = Linear(self.num_heads * self.head_dim, hidden, config.attention_bias, dtype)
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, dtype)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, dtype)
        else:
            self.q_norm = self.k_norm = None
        self.sliding = config.layer_type(layer_idx) == "sliding_attention"
        self.dropout = nn.Dropout(p=config.attention_dropout) if config.attention_dropout > 0 else None
        # a tuner's cell computing the attention (prefix tuning, adaption prompt, LongLoRA: mindformers.tuners),
        # called as tuner(q, k, v, bias) -> [batch, heads, q_len, head_dim] in place of grouped_attention
        self.tuner = None
        self.host_cache_write = host.enabled()
        self.host_softmax = HostAttentionSoftmax(self.scale) if host.enabled() else None  # float32 on CPU
        self.host_swap = HostSwapAxes() if host.enabled() else None
        self.host_rotary = HostRotary() if host.enabled() else None

    @staticmethod
    def cache_spec(config):
        """(heads, key dim, value dim) of this attention's KV cache."""
        return config.num_key_value_heads, config.head_dim, config.head_dim

    def construct(self, x, cos, sin, mask, window_mask=None, k_cache=None, v_cache=None, write_index=None,
                  cache_rows=None):
        # [batch, seq, hidden] -> [batch, heads, seq, head_dim]
        q = split_heads(self.q_proj(x), self.num_heads, self.head_dim, self.host_swap)
        k = split_heads(self.k_proj(x), self.num_kv_heads, self.head_dim, self.host_swap)
        v = split_heads(self.v_proj(x), self.num_kv_heads, self.head_dim, self.host_swap)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin, self.host_rotary), apply_rotary(k, cos, sin, self.host_rotary)
        if k_cache is not None:  # keys/values of every cached slot: [batch, kv_heads, max_len, head_dim]
            k, v = update_cache(k_cache, v_cache, k, v, write_index, cache_rows, self.host_cache_write)
        bias = window_mask if self.sliding else mask
        if self.tuner is None:
            out = grouped_attention(q, k, v, bias, self.scale, self.dropout, self.host_softmax)
        else:
            out = self.tuner(q, k, v, bias)
        return self.o_proj(merge_heads(out, self.host_swap))
