"""PanguAlpha (Zeng et al. 2021) as MindFormers builds it (``mindformers/models/pangualpha``).

Architecture choices:
- token + learned position embeddings, dropout
- ``num_layers - 1`` pre-LayerNorm blocks: ``h = x + attn(ln1(x)); out = h + ffn(ln2(h))``, q/k/v as three
  biased projections (``dense1/2/3``), a biased output ``projection``, an FFN ``mapping`` -> ``projection``
  with fast GeLU
- a final LayerNorm, then the top query layer: the same block, except its queries are projected from a
  learned embedding of the position (``top_query_embedding``) while keys and values come from the
  normalised hidden states. Its output feeds the head directly.
- logits = hidden @ token_embedding^T (tied)

Module names follow MindFormers' (``backbone.embedding.word_embedding``, ``backbone.blocks.<i>.attention.dense1``,
``backbone.top_query_layer``, ...) with ``weight``/``bias`` leaves. No public PanguAlpha weights are
available offline, so no converter from MindFormers' ``.ckpt`` names is included.
"""
from mindspore import nn, ops

from ...kernels import host
from ...registry import MODELS
from ..common.attention import (HostAttentionSoftmax, HostSwapAxes, grouped_attention, merge_heads, split_heads,
                                update_cache)
from ..common.decoder import DecoderForCausalLM, DecoderStack
from ..common.layers import MS_DTYPES, Embedding, LayerNorm, Linear
from .config import PanguAlphaConfig


def _activation(name: str):
    if name == "fast_gelu":
        return lambda x: x * ops.sigmoid(1.702 * x)  # MindFormers' FastGeLU
    if name == "gelu":
        return lambda x: ops.gelu(x, approximate="none")
    return ops.relu


class PanguAlphaAttention(nn.Cell):
    """Multi-head attention with separate query and key/value inputs (the top query layer needs both)."""

    def __init__(self, config: PanguAlphaConfig):
        super().__init__()
        dtype, hidden = MS_DTYPES[config.dtype], config.hidden_size
        self.num_heads, self.head_dim = config.num_attention_heads, hidden // config.num_attention_heads
        self.scale = self.head_dim ** -0.5
        self.dense1 = Linear(hidden, hidden, True, dtype)  # query
        self.dense2 = Linear(hidden, hidden, True, dtype)  # key
        self.dense3 = Linear(hidden, hidden, True, dtype)  # value
        self.projection = Linear(hidden, hidden, True, dtype)
        self.attn_dropout = nn.Dropout(p=config.attn_pdrop) if config.attn_pdrop > 0 else None
        self.host_cache_write = host.enabled()  # see update_cache
        self.host_softmax = HostAttentionSoftmax(self.scale) if host.enabled() else None  # float32 on CPU
        self.host_swap = HostSwapAxes() if host.enabled() else None
        self.dropout = nn.Dropout(p=config.resid_pdrop)

    def construct(self, query, x, mask, k_cache=None, v_cache=None, write_index=None, cache_rows=None):
        # [batch, heads, seq, head_dim]
        q = split_heads(self.dense1(query), self.num_heads, self.head_dim, self.host_swap)
        k = split_heads(self.dense2(x), self.num_heads, self.head_dim, self.host_swap)
        v = split_heads(self.dense3(x), self.num_heads, self.head_dim, self.host_swap)
        if k_cache is not None:
            k, v = update_cache(k_cache, v_cache, k, v, write_index, cache_rows, self.host_cache_write)
        out = grouped_attention(q, k, v, mask, self.scale, self.attn_dropout, self.host_softmax)
        return self.dropout(self.projection(merge_heads(out, self.host_swap)))


class PanguAlphaFeedForward(nn.Cell):
    def __init__(self, config: PanguAlphaConfig):
        super().__init__()
        dtype = MS_DTYPES[config.dtype]
        self.mapping = Linear(config.hidden_size, config.intermediate_size, True, dtype)
        self.projection = Linear(config.intermediate_size, config.hidden_size, True, dtype)
        self.act = _activation(config.hidden_act)
        self.dropout = nn.Dropout(p=config.resid_pdrop)

    def construct(self, x):
        return self.dropout(self.projection(self.act(self.mapping(x))))


class PanguAlphaBlock(nn.Cell):
    """``h = x + attention(ln1(x)); out = h + output(ln2(h))`` (MindFormers' TransformerEncoderLayer)."""

    def __init__(self, config: PanguAlphaConfig):
        super().__init__()
        dtype = MS_DTYPES[config.dtype]
        self.layernorm1 = LayerNorm(config.hidden_size, config.layer_norm_epsilon, dtype)
        self.attention = PanguAlphaAttention(config)
        self.layernorm2 = LayerNorm(config.hidden_size, config.layer_norm_epsilon, dtype)
        self.output = PanguAlphaFeedForward(config)

    def construct(self, x, cos, sin, mask, window_mask=None, k_cache=None, v_cache=None, write_index=None,
                  cache_rows=None):
        h = self.layernorm1(x)
        x = x + self.attention(h, h, mask, k_cache, v_cache, write_index, cache_rows)
        return x + self.output(self.layernorm2(x)), None


class PanguAlphaQueryLayer(PanguAlphaBlock):
    """The top query layer: the block with queries from ``query`` (the position's learned embedding)."""

    def construct(self, x, query, mask, k_cache=None, v_cache=None, write_index=None, cache_rows=None):
        x = x + self.attention(query, self.layernorm1(x), mask, k_cache, v_cache, write_index, cache_rows)
        return x + self.output(self.layernorm2(x))


class PanguAlphaEmbedding(nn.Cell):
    def __init__(self, config: PanguAlphaConfig):
        super().__init__()
        dtype = MS_DTYPES[config.dtype]
        self.word_embedding = Embedding(config.vocab_size, config.hidden_size, dtype)
        self.position_embedding = Embedding(config.max_position_embeddings, config.hidden_size, dtype)
        self.dropout = nn.Dropout(p=config.embd_pdrop)

    def construct(self, input_ids, position_ids, inputs_embeds=None):
        tokens = self.word_embedding(input_ids) if inputs_embeds is None else inputs_embeds
        return self.dropout(tokens + self.position_embedding(position_ids))


class PanguAlphaModel(DecoderStack):
    """The PanguAlpha backbone: ids -> hidden states [batch, seq, hidden] after the top query layer."""

    def __init__(self, config: PanguAlphaConfig):
        super().__init__()
        dtype = MS_DTYPES[config.dtype]
        self.config = config
        self.embedding = PanguAlphaEmbedding(config)
        self.blocks = nn.CellList([PanguAlphaBlock(config) for _ in range(config.num_hidden_layers - 1)])
        self.layernorm = LayerNorm(config.hidden_size, config.layer_norm_epsilon, dtype)
        self.top_query_embedding = Embedding(config.max_position_embeddings, config.hidden_size, dtype)
        self.top_query_layer = PanguAlphaQueryLayer(config)
        self.query_cache = 2 * (config.num_hidden_layers - 1)  # the query layer's entries in the KV cache

    def embed(self, input_ids, position_ids, inputs_embeds=None):
        return self.embedding(input_ids, position_ids, inputs_embeds)

    def layer_list(self):
        return self.blocks

    def rope(self, position_ids):
        return None, None

    def finish(self, x, position_ids, mask, kv_cache, write_index, cache_rows):
        x = self.layernorm(x)
        query = self.top_query_embedding(position_ids)
        if kv_cache is None:
            return self.top_query_layer(x, query, mask)
        return self.top_query_layer(x, query, mask, kv_cache[self.query_cache], kv_cache[self.query_cache + 1],
                                    write_index, cache_rows)

    def embedding_weight(self):
        return self.embedding.word_embedding.weight

    def cache_spec(self):
        config = self.config
        head_dim = config.hidden_size // config.num_attention_heads
        return config.num_hidden_layers, config.num_attention_heads, head_dim, head_dim


@MODELS.register
class PanguAlphaHeadModel(DecoderForCausalLM):
    """PanguAlpha with its (tied) language-model head; ``model(input_ids)`` -> logits [batch, seq, vocab],
    with ``labels`` -> ``(loss, logits)``."""

    config_class = PanguAlphaConfig
    base_model_prefix = "backbone"
    backbone_class = PanguAlphaModel
    learned_positions = True
