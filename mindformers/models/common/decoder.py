"""One decoder for every family: a layer that takes its attention and MLP from the config, a stack with the
layer / KV-cache loop, and the causal-LM and classification heads on top.

A family is its config plus what differs. The config names its parts from the ``BLOCKS`` registry (the way
litgpt's ``Block`` takes ``config.mlp_class``):

- ``attention_class``: ``"Attention"`` (grouped-query, rotary, optional q/k norm and sliding window) or
  ``"MultiLatentAttention"`` (DeepSeek);
- ``mlp_class(layer_idx)``: ``"GatedMLP"`` or ``"SparseMoeBlock"``, per layer;
- ``layer_type(layer_idx)``: ``"full_attention"`` or ``"sliding_attention"``.

Every layer is called ``layer(x, cos, sin, mask, window_mask, k_cache, v_cache, write_index, cache_rows)``
and returns ``(x, router_logits or None)``: ``cos``/``sin`` are the rotary tables (None without rotary
positions), ``mask`` the additive bias of full attention and ``window_mask`` that of sliding-window layers
(None when no layer slides), ``k_cache``/``v_cache`` the layer's two KV-cache tensors or None. (Tensors go
in one by one, not in tuples: MindSpore's recompute refuses tuple inputs.) Families whose
checkpoints use other module names (GPT-2, PanguAlpha) subclass :class:`DecoderStack` with their own
embedding and layer names and reuse the loop.
"""
from typing import Tuple

import mindspore as ms
from mindspore import nn, ops

from ...generation.utils import GenerationMixin
from ...kernels import host
from ...modeling_utils import PreTrainedModel
from ...registry import BLOCKS
from . import mla, mlp  # noqa: F401  (their Cells register in BLOCKS)
from .attention import attention_bias, cache_write_index
from .layers import (
    MS_DTYPES,
    Embedding,
    Linear,
    LinearCrossEntropy,
    RMSNorm,
    RotaryEmbedding,
    arange,
    cast,
    classifier_output,
    default_position_ids,
    full,
    lm_output,
    make_lm_head,
    question_answering_output,
    read_now,
    token_classification_output,
)
from .moe import load_balancing_loss


class DecoderLayer(nn.Cell):
    """Pre-norm block with Llama's names: ``h = x + self_attn(input_layernorm(x));
    out = h + mlp(post_attention_layernorm(h))``; attention and MLP are the ones the config names."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        dtype = MS_DTYPES[config.dtype]
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.self_attn = BLOCKS.get(config.attention_class)(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.mlp = BLOCKS.get(config.mlp_class(layer_idx))(config, layer_idx)
        self.routed = getattr(self.mlp, "returns_router_logits", False)

    def construct(self, x, cos, sin, mask, window_mask=None, k_cache=None, v_cache=None, write_index=None,
                  cache_rows=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, window_mask, k_cache, v_cache, write_index,
                               cache_rows)
        if self.routed:
            out, router_logits = self.mlp(self.post_attention_layernorm(x))
            return x + out, router_logits
        return x + self.mlp(self.post_attention_layernorm(x)), None


class DecoderStack(nn.Cell):
    """The embedding -> layers -> final norm loop shared by every family, with or without a KV cache.

    Subclasses provide ``embed(input_ids, position_ids, inputs_embeds)`` (``inputs_embeds``, if not None, are
    the token embeddings: what is added to them stays), ``layer_list()`` (the CellList of layers),
    ``rope(position_ids)`` ((cos, sin), or (None, None)), ``finish(x, ...)`` (the final norm, or whatever
    comes after the layers), ``embedding_weight()`` (tied head), ``cache_spec()`` and ``self.window`` (the
    sliding window of its sliding layers, None if none slides).

    With ``kv_cache`` (the tensors of a :class:`KVCache`), ``cache_slots`` [batch, seq] says which cache
    slot each input token is written to, and ``attention_mask`` [batch, max_len] marks the slots holding
    real tokens (including the ones written now). ``cache_rows`` [batch] maps input rows to cache rows
    (a serving engine's running requests); None: input row i is cache row i.
    """

    window = None

    def run(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None, cache_slots=None,
            cache_rows=None, inputs_embeds=None):
        """``(final hidden states [batch, seq, hidden], router logits of the MoE layers)``; ``inputs_embeds``
        [batch, seq, hidden]: the token embeddings of ``input_ids``, given instead of looked up."""
        batch, seq = input_ids.shape
        if position_ids is None:
            position_ids = default_position_ids(attention_mask, batch, seq, cache_slots)
        x = self.embed(input_ids, position_ids, inputs_embeds)
        cos, sin = self.rope(position_ids)
        write_index = None
        if kv_cache is None:
            mask, window_mask = self.masks(attention_mask, None, batch, seq, seq)
        else:
            mask, window_mask = self.masks(attention_mask, cache_slots, batch, seq, kv_cache[0].shape[2])
            write_index = cache_write_index(cache_slots, kv_cache[0].shape[1], cache_rows)
        x, router_logits = self.run_layers(x, cos, sin, mask, window_mask, kv_cache, write_index, cache_rows)
        return self.finish(x, position_ids, mask, kv_cache, write_index, cache_rows), router_logits

    def run_layers(self, x, cos, sin, mask, window_mask, kv_cache, write_index, cache_rows, first: int = 0):
        """Every layer of ``layer_list()`` in turn; layer i uses cache tensors ``2 (first + i)`` and the next."""
        router_logits = ()
        for i, layer in enumerate(self.layer_list()):
            if kv_cache is None:
                x, logits = layer(x, cos, sin, mask, window_mask)
            else:
                x, logits = layer(x, cos, sin, mask, window_mask, kv_cache[2 * (first + i)],
                                  kv_cache[2 * (first + i) + 1], write_index, cache_rows)
            if logits is not None:
                router_logits = router_logits + (logits,)
        return x, router_logits

    def masks(self, attention_mask, query_slots, batch: int, q_len: int, k_len: int):
        """The attention bias of full-attention layers and that of sliding layers (None if none slides)."""
        mask = attention_bias(attention_mask, query_slots, batch, q_len, k_len)
        if self.window is None:
            return mask, None
        return mask, attention_bias(attention_mask, query_slots, batch, q_len, k_len, self.window)

    def construct(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None, cache_slots=None,
                  cache_rows=None):
        return self.run(input_ids, attention_mask, position_ids, kv_cache, cache_slots, cache_rows)[0]


class DecoderModel(DecoderStack):
    """The backbone of Llama and its kin (Hugging Face names ``embed_tokens``, ``layers``, ``norm``):
    ids -> final hidden states [batch, seq, hidden]."""

    def __init__(self, config):
        super().__init__()
        self.build(config)

    def build(self, config):
        """Create the layers (the bare model builds them into itself, see :class:`DecoderForFeatureExtraction`)."""
        dtype = MS_DTYPES[config.dtype]
        self.config = config
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, dtype)
        self.layers = nn.CellList([DecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling)
        self.window = config.attention_window()

    def embed(self, input_ids, position_ids, inputs_embeds=None):
        return self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds

    def layer_list(self):
        return self.layers

    def finish(self, x, position_ids, mask, kv_cache, write_index, cache_rows):
        return self.norm(x)

    def rope(self, position_ids):
        return self.rotary(position_ids)

    def embedding_weight(self):
        return self.embed_tokens.weight

    def cache_spec(self) -> Tuple[int, int, int, int]:
        """(layers, heads, key dim, value dim) of the KV cache, from the attention class."""
        config = self.config
        return (config.num_hidden_layers,) + BLOCKS.get(config.attention_class).cache_spec(config)


class PromptInputs:
    """The virtual tokens of a prompt-learning tuner (prompt tuning, p-tuning), for every model of a task.

    A tuner sets ``_virtual_tokens_from`` (its embedding); while one of its adapters runs, every forward pass
    starts with ``virtual_tokens`` ids ``vocab_size .. vocab_size + n - 1``, which the tuner's embedding looks
    up in its prompt table, as PEFT's prompt learning concatenates the prompt before the input embeddings.
    """

    @property
    def virtual_tokens(self) -> int:
        """Virtual tokens a prompt tuner puts before every input (0: none). They are ids ``vocab_size ..
        vocab_size + n - 1``, which the tuner's embedding looks up in its prompt table; every forward pass
        (training, evaluation, generation's first step) starts with them, as PEFT's prompt learning does."""
        source = getattr(self, "_virtual_tokens_from", None)
        return 0 if source is None else source.virtual_tokens()

    def prepend_virtual_tokens(self, input_ids, attention_mask):
        """``(ids, mask)`` with the virtual tokens in front (mask ones there, as PEFT's prefix mask)."""
        batch, n = input_ids.shape[0], self.virtual_tokens
        first = self.config.vocab_size
        virtual = arange(first, first + n, input_ids.dtype).reshape(1, n).broadcast_to((batch, n))
        input_ids = ops.concat((virtual, input_ids), 1)
        if attention_mask is not None:
            attention_mask = ops.concat((ops.ones((batch, n), attention_mask.dtype), attention_mask), 1)
        return input_ids, attention_mask

    def prepend_ignored(self, labels):
        """Per-position ``labels`` [batch, seq] with ``-100`` (ignored) for the virtual positions in front."""
        n = self.virtual_tokens
        return ops.concat((full((labels.shape[0], n), -100, labels.dtype), labels), 1)


class DecoderHeadModel(PreTrainedModel, PromptInputs):
    """A backbone (``backbone_class``, stored under ``base_model_prefix``) with a task head on top; subclasses
    build the head and write ``construct``."""

    base_model_prefix = "model"
    backbone_class = DecoderModel

    def __init__(self, config):
        super().__init__(config)
        setattr(self, self.base_model_prefix, self.backbone_class(config))

    def stack(self):
        return getattr(self, self.base_model_prefix)

    def hidden_states(self, input_ids, attention_mask, position_ids):
        """Final hidden states [batch, virtual + seq, hidden] (the prompt's virtual tokens first, if any)."""
        if self.virtual_tokens:
            input_ids, attention_mask = self.prepend_virtual_tokens(input_ids, attention_mask)
        return self.stack().run(input_ids, attention_mask, position_ids)[0], input_ids

    def _rename_checkpoint_key(self, key: str) -> str:
        # a causal-LM checkpoint (``model.*``) seeding a head whose backbone has another name (``transformer``)
        if self.base_model_prefix != "model" and key.startswith("model."):
            return f"{self.base_model_prefix}.{key[len('model.'):]}"
        return key


class DecoderForCausalLM(PreTrainedModel, PromptInputs, GenerationMixin):
    """A backbone with a language-model head (tied to the input embedding or its own ``lm_head``).

    ``model(input_ids)`` returns logits [batch, seq, vocab]; with ``labels`` it returns ``(loss, logits)``,
    the loss being next-token cross entropy ignoring label -100. ``inputs_embeds`` [batch, seq, hidden], if
    given, are the token embeddings of ``input_ids`` (transformers' argument; the ids still set the shapes and
    positions, learned position embeddings are still added). MoE models whose config sets
    ``output_router_logits`` add ``router_aux_loss_coef`` times the load-balancing loss to it, as
    transformers does, and return ``(loss, logits, aux_loss)``. In training mode (``set_train(True)``) on CPU,
    the loss comes from the fused head and loss (:class:`LinearCrossEntropy`) and the logits are None.

    Subclasses set ``config_class`` and, for other layouts, ``backbone_class`` / ``base_model_prefix``.
    """

    task = "causal_lm"
    base_model_prefix = "model"
    backbone_class = DecoderModel

    def __init__(self, config):
        super().__init__(config)
        setattr(self, self.base_model_prefix, self.backbone_class(config))
        self.lm_head = make_lm_head(config)
        # a tied head's product with the embedding, as a primitive of this model (mindformers.parallel.shard)
        self.tied_matmul = ops.MatMul(transpose_b=True) if self.lm_head is None else None
        self.aux_loss = config.aux_loss_settings()  # (coefficient, experts, top_k) or None
        # training on CPU: the loss and its gradient from the host kernel, no logits (see LinearCrossEntropy)
        self.fused_loss = LinearCrossEntropy() if host.enabled() else None
        self.host_linear = host.enabled()  # outside training, a tied head's product over few rows on the host

    def stack(self):
        return getattr(self, self.base_model_prefix)

    @property
    def prefix_positions(self) -> int:
        """Positions a prefix tuner's keys and values take before every input (0: none): the input's tokens
        start at this position, as after PEFT's prefix in the KV cache."""
        source = getattr(self, "_prefix_positions_from", None)
        return 0 if source is None else source.prefix_positions()

    def with_virtual_tokens(self, input_ids, attention_mask, labels):
        """``(ids, mask, labels)`` with the virtual tokens in front (mask ones, labels ignored there)."""
        input_ids, attention_mask = self.prepend_virtual_tokens(input_ids, attention_mask)
        return input_ids, attention_mask, None if labels is None else self.prepend_ignored(labels)

    def construct(self, input_ids, attention_mask=None, position_ids=None, labels=None, inputs_embeds=None):
        if self.virtual_tokens:
            if inputs_embeds is not None:
                raise ValueError("inputs_embeds cannot be given to a model with a prompt tuner's virtual tokens")
            input_ids, attention_mask, labels = self.with_virtual_tokens(input_ids, attention_mask, labels)
        if position_ids is None and self.prefix_positions:
            position_ids = default_position_ids(attention_mask, *input_ids.shape) + self.prefix_positions
        hidden, router_logits = self.stack().run(input_ids, attention_mask, position_ids,
                                                 inputs_embeds=inputs_embeds)
        out = lm_output(hidden, self.lm_head, self.stack().embedding_weight(), labels, self.tied_matmul,
                        self.fused_loss if self.training else None, self.host_linear and not self.training)
        if labels is None or self.aux_loss is None:
            return out
        coefficient, experts, top_k = self.aux_loss
        aux = load_balancing_loss(router_logits, experts, top_k, attention_mask)
        return out[0] + coefficient * aux, out[1], aux

    def tied_embedding_table(self):
        """The token embedding table the head shares, or None (its own ``lm_head``, or a prompt tuner's virtual
        tokens, which look up another table first)."""
        if self.lm_head is not None or self.virtual_tokens:
            return None
        return self.stack().embedding_weight()

    def router_logits(self, input_ids, attention_mask=None) -> Tuple:
        """The router logits of every MoE layer, ``[batch * seq, experts]`` each (empty for dense models): what
        transformers returns with ``output_router_logits``, for expert-load statistics."""
        return self.stack().run(input_ids, attention_mask)[1]

    def decode_logits(self, input_ids, attention_mask, position_ids, kv_cache, cache_slots, cache_rows=None):
        """float32 logits [batch, vocab] of the last position, reading and writing ``kv_cache``."""
        weight = read_now(self.stack().embedding_weight())  # the tied head's table, read once with the embedding's
        hidden = self.stack().run(input_ids, attention_mask, position_ids, kv_cache, cache_slots, cache_rows)[0]
        if hidden.shape[1] != 1:
            hidden = hidden[:, -1:]
        logits = lm_output(hidden, self.lm_head, weight, None, self.tied_matmul,
                           use_host=self.host_linear and not self.training)  # as the layers' Linears decide
        # a reshape, not logits[:, 0]: MindSpore's CPU StridedSlice took 33 ms on [32, 1, 49152] logits
        return cast(logits.reshape(logits.shape[0], logits.shape[-1]), ms.float32)

    def kv_cache_spec(self) -> Tuple[int, int, int, int]:
        """(layers, heads, key dim, value dim) of the KV cache."""
        return self.stack().cache_spec()


class DecoderForSequenceClassification(DecoderHeadModel):
    """A backbone with a linear ``score`` head on the last non-padding token.

    Returns logits [batch, num_labels], or ``(loss, logits)`` with ``labels``. With a prompt tuner's virtual
    tokens in front, the pooled token is still the last non-padding one (PEFT passes embeddings, so
    transformers pools the last position: the same unless rows are right-padded).
    """

    task = "sequence_classification"
    _head_keys = ("score.weight",)

    def __init__(self, config):
        super().__init__(config)
        self.score = Linear(config.hidden_size, config.num_labels, False, MS_DTYPES[config.dtype])

    def construct(self, input_ids, attention_mask=None, position_ids=None, labels=None):
        hidden, input_ids = self.hidden_states(input_ids, attention_mask, position_ids)
        return classifier_output(hidden, self.score, input_ids, labels, self.config)


# transformers' classifier dropout when the config sets neither classifier_dropout nor hidden_dropout (Llama)
DEFAULT_CLASSIFIER_DROPOUT = 0.1


class DecoderForTokenClassification(DecoderHeadModel):
    """A backbone with dropout and a linear ``score`` head (with bias) on every position, as transformers'
    ``GenericForTokenClassification``.

    Returns logits [batch, seq, num_labels], or ``(loss, logits)`` with ``labels`` [batch, seq] (mean cross
    entropy over labels != -100). With a prompt tuner's virtual tokens, logits cover them too
    ([batch, virtual + seq, num_labels], as PEFT returns them); labels of the input's length get -100 there.
    """

    task = "token_classification"
    _head_keys = ("score.weight", "score.bias")

    def __init__(self, config):
        super().__init__(config)
        rate = getattr(config, "classifier_dropout", None)
        rate = getattr(config, "hidden_dropout", None) if rate is None else rate
        rate = DEFAULT_CLASSIFIER_DROPOUT if rate is None else rate
        self.dropout = nn.Dropout(p=rate) if rate > 0 else nn.Identity()
        bias = getattr(config, "token_classification_bias", True)
        self.score = Linear(config.hidden_size, config.num_labels, bias, MS_DTYPES[config.dtype])

    def construct(self, input_ids, attention_mask=None, position_ids=None, labels=None):
        hidden, _ = self.hidden_states(input_ids, attention_mask, position_ids)
        if labels is not None and self.virtual_tokens and labels.shape[1] != hidden.shape[1]:
            labels = self.prepend_ignored(labels)
        return token_classification_output(self.score(self.dropout(hidden)), labels)


class DecoderForQuestionAnswering(DecoderHeadModel):
    """A backbone with a linear ``qa_outputs`` head [hidden -> 2] giving span start and end logits, as
    transformers' ``GenericForQuestionAnswering``.

    Returns ``(start_logits, end_logits)``, each [batch, seq]; with ``start_positions`` and
    ``end_positions`` [batch] it returns ``(loss, start_logits, end_logits)``: the mean of the two cross
    entropies, positions clamped to [0, seq] and position ``seq`` ignored (transformers' rule for spans
    outside the input). With a prompt tuner's virtual tokens, logits cover them too (as PEFT returns them) and
    positions, given in the input's coordinates, are moved past them.
    """

    task = "question_answering"
    _head_keys = ("qa_outputs.weight", "qa_outputs.bias")

    def __init__(self, config):
        super().__init__(config)
        self.qa_outputs = Linear(config.hidden_size, 2, True, MS_DTYPES[config.dtype])

    def construct(self, input_ids, attention_mask=None, position_ids=None, start_positions=None,
                  end_positions=None):
        hidden, _ = self.hidden_states(input_ids, attention_mask, position_ids)
        if start_positions is not None and self.virtual_tokens:
            start_positions, end_positions = start_positions + self.virtual_tokens, end_positions + self.virtual_tokens
        return question_answering_output(self.qa_outputs(hidden), start_positions, end_positions)


class DecoderForFeatureExtraction(DecoderModel, PreTrainedModel, PromptInputs):
    """The bare backbone as a model of its own (transformers' ``LlamaModel``: ``embed_tokens``, ``layers``,
    ``norm`` at the top level, no prefix): ids -> final hidden states [batch, seq, hidden] (with a prompt
    tuner's virtual tokens first, as PEFT returns them). A causal-LM checkpoint seeds it (its ``model.``
    prefix dropped, ``lm_head`` unused)."""

    task = "feature_extraction"

    def __init__(self, config):
        PreTrainedModel.__init__(self, config)  # DecoderModel.__init__ would start the Cell without a config
        self.build(config)

    def stack(self):
        return self

    def _rename_checkpoint_key(self, key: str) -> str:
        return key[len("model."):] if key.startswith("model.") else key

    def construct(self, input_ids, attention_mask=None, position_ids=None):
        if self.virtual_tokens:
            input_ids, attention_mask = self.prepend_virtual_tokens(input_ids, attention_mask)
        return self.run(input_ids, attention_mask, position_ids)[0]
