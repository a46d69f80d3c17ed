"""Llama (Touvron et al. 2023) and the models that share its shape (Llama 3, SmolLM2, Qwen2).

Architecture choices:
- pre-norm blocks with RMSNorm: ``h = x + attn(norm(x)); out = h + mlp(norm(h))``
- rotary position embeddings in the "rotate half" layout, optional linear / llama3 frequency scaling
- grouped-query attention: ``num_key_value_heads`` key/value heads shared by groups of query heads
- SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``
- optional biases on q/k/v (Qwen2) or on all attention projections; optional tied output embedding
"""
import mindspore as ms
from mindspore import nn, ops

from ...generation.utils import GenerationMixin
from ...modeling_utils import PreTrainedModel
from ...registry import MODELS
from ..common.attention import (
    attention_bias,
    cache_write_index,
    grouped_attention,
    merge_heads,
    split_heads,
    update_cache,
)
from ..common.layers import (
    MS_DTYPES,
    Embedding,
    Linear,
    RMSNorm,
    RotaryEmbedding,
    apply_rotary,
    cast,
    classifier_output,
    default_position_ids,
    lm_output,
    make_lm_head,
)
from .config import LlamaConfig, Qwen2Config


class LlamaAttention(nn.Cell):
    def __init__(self, config: LlamaConfig):
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
        self.dropout = nn.Dropout(p=config.attention_dropout) if config.attention_dropout > 0 else None

    def construct(self, x, cos, sin, bias, k_cache=None, v_cache=None, write_index=None, cache_rows=None):
        # [batch, seq, hidden] -> [batch, heads, seq, head_dim]
        q = split_heads(self.q_proj(x), self.num_heads, self.head_dim)
        k = split_heads(self.k_proj(x), self.num_kv_heads, self.head_dim)
        v = split_heads(self.v_proj(x), self.num_kv_heads, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if k_cache is not None:  # keys/values of every cached slot: [batch, kv_heads, max_len, head_dim]
            k, v = update_cache(k_cache, v_cache, k, v, write_index, cache_rows)
        out = grouped_attention(q, k, v, bias, self.scale, self.dropout)
        return self.o_proj(merge_heads(out))


class LlamaMLP(nn.Cell):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        dtype = MS_DTYPES[config.dtype]
        self.gate_proj = Linear(config.hidden_size, config.intermediate_size, config.mlp_bias, dtype)
        self.up_proj = Linear(config.hidden_size, config.intermediate_size, config.mlp_bias, dtype)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, config.mlp_bias, dtype)

    def construct(self, x):
        return self.down_proj(ops.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Cell):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        dtype = MS_DTYPES[config.dtype]
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.self_attn = LlamaAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.mlp = LlamaMLP(config)

    def construct(self, x, cos, sin, bias, k_cache=None, v_cache=None, write_index=None, cache_rows=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, bias, k_cache, v_cache, write_index, cache_rows)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Cell):
    """The decoder stack without a head: ids -> final hidden states [batch, seq, hidden].

    With ``kv_cache`` (the tensors of a :class:`KVCache`), ``cache_slots`` [batch, seq] says which cache
    slot each input token is written to, and ``attention_mask`` [batch, max_len] marks the slots holding
    real tokens (including the ones written now). ``cache_rows`` [batch] maps input rows to cache rows
    (a serving engine's running requests); None: input row i is cache row i.
    """

    def __init__(self, config: LlamaConfig):
        super().__init__()
        dtype = MS_DTYPES[config.dtype]
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, dtype)
        self.layers = nn.CellList([LlamaDecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling)
        self.num_kv_heads = config.num_key_value_heads

    def construct(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None, cache_slots=None, cache_rows=None):
        batch, seq = input_ids.shape
        if position_ids is None:
            position_ids = default_position_ids(attention_mask, batch, seq, cache_slots)
        cos, sin = self.rotary(position_ids)
        x = self.embed_tokens(input_ids)
        if kv_cache is None:
            bias = attention_bias(attention_mask, None, batch, seq, seq)
            for layer in self.layers:
                x = layer(x, cos, sin, bias)
        else:
            bias = attention_bias(attention_mask, cache_slots, batch, seq, kv_cache[0].shape[2])
            write_index = cache_write_index(cache_slots, self.num_kv_heads, cache_rows)
            for i, layer in enumerate(self.layers):
                x = layer(x, cos, sin, bias, kv_cache[2 * i], kv_cache[2 * i + 1], write_index, cache_rows)
        return self.norm(x)


class LlamaPreTrainedModel(PreTrainedModel):
    config_class = LlamaConfig
    base_model_prefix = "model"


@MODELS.register
class LlamaForCausalLM(LlamaPreTrainedModel, GenerationMixin):
    """Llama with a language-model head.

    ``model(input_ids)`` returns logits [batch, seq, vocab]; with ``labels`` it returns
    ``(loss, logits)`` where the loss is next-token cross entropy ignoring label -100.
    """

    task = "causal_lm"

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.lm_head = make_lm_head(config)

    def construct(self, input_ids, attention_mask=None, position_ids=None, labels=None):
        hidden = self.model(input_ids, attention_mask, position_ids)
        return lm_output(hidden, self.lm_head, self.model.embed_tokens.weight, labels)

    def decode_logits(self, input_ids, attention_mask, position_ids, kv_cache, cache_slots, cache_rows=None):
        """float32 logits [batch, vocab] of the last position, reading and writing ``kv_cache``."""
        hidden = self.model(input_ids, attention_mask, position_ids, kv_cache, cache_slots, cache_rows)[:, -1:]
        return cast(lm_output(hidden, self.lm_head, self.model.embed_tokens.weight, None)[:, 0], ms.float32)

    def kv_cache_spec(self):
        """(layers, kv heads, head dim) of the KV cache."""
        return self.config.num_hidden_layers, self.config.num_key_value_heads, self.config.head_dim


@MODELS.register
class LlamaForSequenceClassification(LlamaPreTrainedModel):
    """Llama with a linear ``score`` head on the last non-padding token.

    Returns logits [batch, num_labels], or ``(loss, logits)`` with ``labels``.
    """

    task = "sequence_classification"
    _head_keys = ("score.weight",)

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.score = Linear(config.hidden_size, config.num_labels, False, MS_DTYPES[config.dtype])

    def construct(self, input_ids, attention_mask=None, position_ids=None, labels=None):
        hidden = self.model(input_ids, attention_mask, position_ids)
        return classifier_output(hidden, self.score, input_ids, labels, self.config)


@MODELS.register
class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2: the Llama causal LM with q/k/v biases."""

    config_class = Qwen2Config


@MODELS.register
class Qwen2ForSequenceClassification(LlamaForSequenceClassification):
    config_class = Qwen2Config

