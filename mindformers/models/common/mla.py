"""Multi-head latent attention (DeepSeek-V2, Liu et al. 2024; used by DeepSeek-V3).

Keys and values are compressed into one small latent per token, ``c = RMSNorm(W_a x)[:kv_lora_rank]``,
plus a single rotary key shared by all heads, ``k_rot = rope(W_a x)[kv_lora_rank:]``. The KV cache holds
only those two (``kv_lora_rank + qk_rope_head_dim`` numbers per token and layer instead of
``2 * heads * head_dim``); every step expands the cached latents into per-head keys and values with
``kv_b_proj``. Queries go through their own low-rank path (``q_a_proj`` -> RMSNorm -> ``q_b_proj``) unless
``q_lora_rank`` is None. Each head's query/key is ``[nope part | rotary part]``; the rotary part may be
laid out in interleaved pairs (``rope_interleave``). With YaRN rope the softmax scale is multiplied by
``mscale(factor, mscale_all_dim) ** 2``, as DeepSeek does.
"""
from mindspore import nn, ops

from ...kernels import host
from ...registry import BLOCKS
from .attention import (HostAttentionSoftmax, HostSwapAxes, grouped_attention, merge_heads, split_heads,
                        update_cache)
from .layers import MS_DTYPES, HostRotary, Linear, RMSNorm, _yarn_mscale, apply_rotary, apply_rotary_interleaved


@BLOCKS.register
class MultiLatentAttention(nn.Cell):
    """MLA with the parameter names of transformers' ``DeepseekV3Attention``.

    Args:
        config: needs ``q_lora_rank`` (or None), ``kv_lora_rank``, ``qk_nope_head_dim``, ``qk_rope_head_dim``,
            ``v_head_dim``, ``rope_interleave`` and the usual attention fields.
    """

    def __init__(self, config, layer_idx: int):
        super().__init__()
        dtype = MS_DTYPES[config.dtype]
        hidden, heads = config.hidden_size, config.num_attention_heads
        self.num_heads = heads
        self.nope_dim, self.rope_dim, self.v_dim = config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim
        self.qk_dim = self.nope_dim + self.rope_dim
        self.kv_rank = config.kv_lora_rank
        bias = config.attention_bias
        if config.q_lora_rank is None:
            self.q_proj = Linear(hidden, heads * self.qk_dim, False, dtype)
            self.q_a_proj = self.q_a_layernorm = self.q_b_proj = None
        else:
            self.q_proj = None
            self.q_a_proj = Linear(hidden, config.q_lora_rank, bias, dtype)
            self.q_a_layernorm = RMSNorm(config.q_lora_rank, config.rms_norm_eps, dtype)
            self.q_b_proj = Linear(config.q_lora_rank, heads * self.qk_dim, False, dtype)
        self.kv_a_proj_with_mqa = Linear(hidden, self.kv_rank + self.rope_dim, bias, dtype)
        self.kv_a_layernorm = RMSNorm(self.kv_rank, config.rms_norm_eps, dtype)
        self.kv_b_proj = Linear(self.kv_rank, heads * (self.nope_dim + self.v_dim), False, dtype)
        self.o_proj = Linear(heads * self.v_dim, hidden, bias, dtype)
        self.scale = self.qk_dim ** -0.5
        scaling = config.rope_scaling
        if scaling is not None and scaling.get("mscale_all_dim"):
            self.scale *= _yarn_mscale(float(scaling["factor"]), float(scaling["mscale_all_dim"])) ** 2
        self.interleaved = config.rope_interleave
        self.sliding = config.layer_type(layer_idx) == "sliding_attention"
        self.dropout = nn.Dropout(p=config.attention_dropout) if config.attention_dropout > 0 else None
        self.host_cache_write = host.enabled()  # see update_cache
        self.host_softmax = HostAttentionSoftmax(self.scale) if host.enabled() else None  # float32 on CPU
        self.host_swap = HostSwapAxes() if host.enabled() else None
        # the "rotate half" layout by the host kernels on CPU (the interleaved one stays generic)
        self.host_rotary = HostRotary() if host.enabled() and not self.interleaved else None

    @staticmethod
    def cache_spec(config):
        """(heads, key dim, value dim) of the cache: one latent [kv_lora_rank] and one rotary key per token."""
        return 1, config.kv_lora_rank, config.qk_rope_head_dim

    def rotate(self, x, cos, sin):
        """The rotary embedding of ``x`` [batch, heads, seq, rope_dim] in this model's layout."""
        if self.interleaved:
            return apply_rotary_interleaved(x, cos, sin)
        return apply_rotary(x, cos, sin, self.host_rotary)

    def construct(self, x, cos, sin, mask, window_mask=None, k_cache=None, v_cache=None, write_index=None,
                  cache_rows=None):
        batch, seq = x.shape[0], x.shape[1]
        if self.q_proj is not None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = split_heads(q, self.num_heads, self.qk_dim, self.host_swap)  # [batch, heads, seq, qk_dim]
        compressed = self.kv_a_proj_with_mqa(x)  # [batch, seq, kv_rank + rope_dim]
        latent = self.kv_a_layernorm(compressed[..., :self.kv_rank]).reshape(batch, 1, seq, self.kv_rank)
        k_rot = compressed[..., self.kv_rank:].reshape(batch, 1, seq, self.rope_dim)
        q = ops.cat((q[..., :self.nope_dim], self.rotate(q[..., self.nope_dim:], cos, sin)), -1)
        k_rot = self.rotate(k_rot, cos, sin)
        if k_cache is not None:  # the cache holds latents [batch, 1, max_len, kv_rank] and k_rot [.., rope_dim]
            latent, k_rot = update_cache(k_cache, v_cache, latent, k_rot, write_index, cache_rows,
                                         self.host_cache_write)
        keys = latent.shape[2]
        kv = self.kv_b_proj(latent.reshape(batch, keys, self.kv_rank))
        # [batch, heads, keys, nope + v]
        kv = split_heads(kv, self.num_heads, self.nope_dim + self.v_dim, self.host_swap)
        k = ops.cat((kv[..., :self.nope_dim], k_rot.broadcast_to((batch, self.num_heads, keys, self.rope_dim))), -1)
        v = kv[..., self.nope_dim:]
        out = grouped_attention(q, k, v, window_mask if self.sliding else mask, self.scale, self.dropout,
                                self.host_softmax)
        return self.o_proj(merge_heads(out, self.host_swap))
