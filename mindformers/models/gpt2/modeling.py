"""GPT-2 (Radford et al. 2019).

Architecture choices:
- learned absolute position embeddings added to token embeddings
- pre-norm blocks with LayerNorm: ``h = x + attn(ln_1(x)); out = h + mlp(ln_2(h))``
- one fused ``c_attn`` projection for q, k, v; "Conv1D" layers store weights ``[in, out]``
- GELU (tanh approximation) MLP of width ``4 * hidden``; output embedding tied to the input one
"""
import mindspore as ms
from mindspore import nn, ops

from ...kernels import host
from ...modeling_utils import PreTrainedModel
from ...registry import MODELS
from ..common.attention import (HostAttentionSoftmax, HostSwapAxes, grouped_attention, merge_heads, split_heads,
                                update_cache)
from ..common.decoder import DecoderForCausalLM, DecoderForSequenceClassification, DecoderStack
from ..common.layers import MS_DTYPES, Conv1D, Embedding, LayerNorm
from .config import GPT2Config


def _activation(name: str):
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: ops.gelu(x, approximate="tanh")
    if name == "gelu":
        return lambda x: ops.gelu(x, approximate="none")
    return ops.relu


class GPT2Attention(nn.Cell):
    def __init__(self, config: GPT2Config, layer_idx: int):
        super().__init__()
        dtype = MS_DTYPES[config.dtype]
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        scale = self.head_dim ** -0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            scale /= layer_idx + 1
        self.scale = scale
        self.c_attn = Conv1D(config.hidden_size, 3 * config.hidden_size, dtype)
        self.c_proj = Conv1D(config.hidden_size, config.hidden_size, dtype)
        self.attn_dropout = nn.Dropout(p=config.attn_pdrop) if config.attn_pdrop > 0 else None
        self.resid_dropout = nn.Dropout(p=config.resid_pdrop)
        self.host_cache_write = host.enabled()  # see update_cache
        self.host_softmax = HostAttentionSoftmax(self.scale) if host.enabled() else None  # float32 on CPU
        self.host_swap = HostSwapAxes() if host.enabled() else None

    def construct(self, x, mask, k_cache=None, v_cache=None, write_index=None, cache_rows=None):
        qkv = self.c_attn(x)
        q, k, v = ops.split(qkv, qkv.shape[-1] // 3, -1)  # (each a third: heads may be split)
        # [batch, seq, hidden] -> [batch, heads, seq, head_dim]
        q = split_heads(q, self.num_heads, self.head_dim, self.host_swap)
        k = split_heads(k, self.num_heads, self.head_dim, self.host_swap)
        v = split_heads(v, self.num_heads, self.head_dim, self.host_swap)
        if k_cache is not None:
            k, v = update_cache(k_cache, v_cache, k, v, write_index, cache_rows, self.host_cache_write)
        out = grouped_attention(q, k, v, mask, self.scale, self.attn_dropout, self.host_softmax)
        return self.resid_dropout(self.c_proj(merge_heads(out, self.host_swap)))


class GPT2MLP(nn.Cell):
    def __init__(self, config: GPT2Config):
        super().__init__()
        dtype = MS_DTYPES[config.dtype]
        self.c_fc = Conv1D(config.hidden_size, config.intermediate_size, dtype)
        self.c_proj = Conv1D(config.intermediate_size, config.hidden_size, dtype)
        self.act = _activation(config.activation_function)
        self.dropout = nn.Dropout(p=config.resid_pdrop)

    def construct(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class GPT2Block(nn.Cell):
    def __init__(self, config: GPT2Config, layer_idx: int):
        super().__init__()
        dtype = MS_DTYPES[config.dtype]
        self.ln_1 = LayerNorm(config.hidden_size, config.layer_norm_epsilon, dtype)
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = LayerNorm(config.hidden_size, config.layer_norm_epsilon, dtype)
        self.mlp = GPT2MLP(config)

    def construct(self, x, cos, sin, mask, window_mask=None, k_cache=None, v_cache=None, write_index=None,
                  cache_rows=None):
        x = x + self.attn(self.ln_1(x), mask, k_cache, v_cache, write_index, cache_rows)
        return x + self.mlp(self.ln_2(x)), None


class GPT2Model(DecoderStack):
    """The GPT-2 stack without a head (``wte``, ``wpe``, ``h``, ``ln_f``): ids -> final hidden states
    [batch, seq, hidden]. The layer loop and KV cache are :class:`DecoderStack`'s."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        dtype = MS_DTYPES[config.dtype]
        self.config = config
        self.wte = Embedding(config.vocab_size, config.hidden_size, dtype)
        self.wpe = Embedding(config.max_position_embeddings, config.hidden_size, dtype)
        self.drop = nn.Dropout(p=config.embd_pdrop)
        self.h = nn.CellList([GPT2Block(config, i) for i in range(config.num_hidden_layers)])
        self.ln_f = LayerNorm(config.hidden_size, config.layer_norm_epsilon, dtype)

    def embed(self, input_ids, position_ids, inputs_embeds=None):
        tokens = self.wte(input_ids) if inputs_embeds is None else inputs_embeds
        return self.drop(tokens + self.wpe(position_ids))

    def layer_list(self):
        return self.h

    def finish(self, x, position_ids, mask, kv_cache, write_index, cache_rows):
        return self.ln_f(x)

    def rope(self, position_ids):
        return None, None  # learned absolute positions, added in embed()

    def embedding_weight(self):
        return self.wte.weight

    def cache_spec(self):
        config = self.config
        head_dim = config.hidden_size // config.num_attention_heads
        return config.num_hidden_layers, config.num_attention_heads, head_dim, head_dim


class GPT2PreTrainedModel(PreTrainedModel):
    config_class = GPT2Config
    base_model_prefix = "transformer"
    backbone_class = GPT2Model
    learned_positions = True
    # torch buffers of old GPT-2 checkpoints (the causal mask), not weights
    _ignored_checkpoint_keys = (".attn.bias", ".attn.masked_bias")

    def _rename_checkpoint_key(self, key: str) -> str:
        # The original OpenAI GPT-2 files on the Hub store the stack without the "transformer." prefix.
        if key.startswith(("h.", "wte.", "wpe.", "ln_f.")):
            return "transformer." + key
        return key

    def _post_init_weights(self, rng):
        # GPT-2 paper: residual projections scaled by 1/sqrt(2 * n_layer)
        std = self.config.initializer_range / (2 * self.config.num_hidden_layers) ** 0.5
        for name, param in self.parameters_and_names():
            if name.endswith("c_proj.weight"):
                param.set_data(ms.Tensor(rng.normal(0.0, std, param.shape).astype("float32"), dtype=param.dtype))


@MODELS.register
class GPT2LMHeadModel(GPT2PreTrainedModel, DecoderForCausalLM):
    """GPT-2 with its (tied) language-model head.

    ``model(input_ids)`` returns logits [batch, seq, vocab]; with ``labels`` it returns ``(loss, logits)``.
    """


@MODELS.register
class GPT2ForSequenceClassification(GPT2PreTrainedModel, DecoderForSequenceClassification):
    """GPT-2 with a linear ``score`` head on the last non-padding token."""
