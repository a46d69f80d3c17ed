"""Config of PanguAlpha, with MindFormers' field names (``ffn_hidden_size``, ``num_layers``, ``num_heads``,
``seq_length``, ``embedding_dropout_prob``, ``checkpoint_name_or_path``, ...)."""
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional

from ...configuration_utils import PretrainedConfig

ACTIVATIONS = ("fast_gelu", "gelu", "relu")


@dataclass(init=False)
class PanguAlphaConfig(PretrainedConfig):
    """PanguAlpha: learned token and position embeddings, ``num_layers - 1`` pre-LayerNorm blocks, a final
    LayerNorm, then a "top query" layer whose queries are a learned embedding of the position; the output
    projection is tied to the token embedding.

    MindFormers' runtime fields (``batch_size``, ``use_past``, ``softmax_compute_type``) are accepted; the
    generation fields (``max_decode_length``, ``top_k``, ``top_p``, ``do_sample``, ``repetition_penalty``)
    become the model's default generation settings.
    """

    model_type = "pangualpha"
    # model-parallel split (mindformers/parallel/plan.py), as MindFormers shards PanguAlpha
    tp_plan: ClassVar[Dict[str, str]] = {
        "backbone.embedding.word_embedding": "vocab",
        **{f"backbone.{block}.attention.dense{i}": "colwise" for block in ("blocks.*", "top_query_layer")
           for i in (1, 2, 3)},
        **{f"backbone.{block}.attention.projection": "rowwise" for block in ("blocks.*", "top_query_layer")},
        **{f"backbone.{block}.output.mapping": "colwise" for block in ("blocks.*", "top_query_layer")},
        **{f"backbone.{block}.output.projection": "rowwise" for block in ("blocks.*", "top_query_layer")},
    }
    aliases = {
        "ffn_hidden_size": "intermediate_size",
        "embedding_dropout_prob": "embd_pdrop",
        "hidden_dropout_rate": "resid_pdrop",
        "attention_dropout_rate": "attn_pdrop",
    }

    vocab_size: int = 40000
    hidden_size: int = 2560
    num_hidden_layers: int = 32
    """Blocks including the top query layer (MindFormers ``num_layers``)."""
    num_attention_heads: int = 32
    max_position_embeddings: int = 1024
    """Longest sequence (MindFormers ``seq_length``): size of the position and top-query embeddings."""
    intermediate_size: Optional[int] = None
    """Width of the feed-forward layer (MindFormers ``ffn_hidden_size``); None means ``4 * hidden_size``."""
    hidden_act: str = "fast_gelu"
    """Feed-forward activation: fast_gelu (``x * sigmoid(1.702 x)``, MindFormers' default), gelu, relu."""
    layer_norm_epsilon: float = 1e-5
    """Epsilon of LayerNorm."""
    embd_pdrop: float = 0.1
    """Dropout on the embeddings during training (MindFormers ``embedding_dropout_prob``)."""
    resid_pdrop: float = 0.1
    """Dropout on the attention and feed-forward outputs (MindFormers ``hidden_dropout_rate``)."""
    attn_pdrop: float = 0.1
    """Dropout on attention probabilities (MindFormers ``attention_dropout_rate``)."""
    post_layernorm_residual: bool = False
    """Residuals around the normalised inputs instead of the block inputs; only False (pre-norm) is supported."""
    checkpoint_name_or_path: Optional[str] = None
    """Where the weights are (a directory or file); ``AutoModel.from_pretrained`` of a YAML loads it."""
    batch_size: Optional[int] = None
    use_past: Optional[bool] = None
    softmax_compute_type: Optional[str] = None
    """MindFormers runtime settings, accepted for its YAMLs: batches and the KV cache are sized per call here,
    and softmax always runs in float32."""
    max_decode_length: Optional[int] = None
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    do_sample: Optional[bool] = None
    repetition_penalty: Optional[float] = None
    """Default generation settings (``max_decode_length`` is the total length, prompt included)."""
    pad_token_id: Optional[int] = 6
    eos_token_id: Optional[Any] = 8
    tie_word_embeddings: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"PanguAlphaConfig: hidden_act must be one of {ACTIVATIONS}, found {self.hidden_act!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"PanguAlphaConfig: hidden_size ({self.hidden_size}) must be divisible by num_heads "
                             f"({self.num_attention_heads})")
        if self.num_hidden_layers < 2:
            raise ValueError(f"PanguAlphaConfig: num_layers must be >= 2 (blocks plus the top query layer), "
                             f"found {self.num_hidden_layers}")
        if self.post_layernorm_residual:
            raise ValueError("PanguAlphaConfig: post_layernorm_residual=True is not supported; set it to false")
        if not self.tie_word_embeddings:
            raise ValueError("PanguAlphaConfig: the output projection is the token embedding; "
                             "tie_word_embeddings must be true")

    def generation_defaults(self) -> Dict[str, Any]:
        values = {"max_length": self.max_decode_length, "top_k": self.top_k, "top_p": self.top_p,
                  "do_sample": self.do_sample, "repetition_penalty": self.repetition_penalty}
        return {k: v for k, v in values.items() if v is not None}
