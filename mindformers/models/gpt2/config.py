"""Config of GPT-2."""
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional

from ...configuration_utils import PretrainedConfig

ACTIVATIONS = ("gelu_new", "gelu", "relu", "gelu_pytorch_tanh")


@dataclass(init=False)
class GPT2Config(PretrainedConfig):
    """GPT-2: learned absolute positions, pre-LayerNorm blocks, fused qkv projection, GELU MLP.

    Saved with Hugging Face's GPT-2 names (``n_embd``, ``n_layer``, ``n_head``, ``n_positions``,
    ``n_inner``); those and MindFormers' (``num_layers``, ``num_heads``, ``seq_length``) are accepted.
    """

    model_type = "gpt2"
    processor_type = "GPT2Processor"
    hf_names = {
        "hidden_size": "n_embd",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "max_position_embeddings": "n_positions",
        "intermediate_size": "n_inner",
    }
    aliases = {"n_ctx": "max_position_embeddings", "hidden_act": "activation_function"}
    # model-parallel split (mindformers/parallel/plan.py): Conv1D keeps [in, out], the plan knows
    tp_plan: ClassVar[Dict[str, str]] = {
        "transformer.wte": "vocab",
        "transformer.h.*.attn.c_attn": "colwise",
        "transformer.h.*.attn.c_proj": "rowwise",
        "transformer.h.*.mlp.c_fc": "colwise",
        "transformer.h.*.mlp.c_proj": "rowwise",
        "lm_head": "head",
    }

    vocab_size: int = 50257
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 1024
    intermediate_size: Optional[int] = None
    """Width of the MLP; None means ``4 * hidden_size``."""
    activation_function: str = "gelu_new"
    """MLP activation: gelu_new (tanh approximation, GPT-2's), gelu, relu."""
    layer_norm_epsilon: float = 1e-5
    """Epsilon of LayerNorm."""
    resid_pdrop: float = 0.1
    """Dropout on the residual branches during training."""
    embd_pdrop: float = 0.1
    """Dropout on the embeddings during training."""
    attn_pdrop: float = 0.1
    """Dropout on attention probabilities during training."""
    scale_attn_weights: bool = True
    """Divide attention scores by sqrt(head_dim)."""
    scale_attn_by_inverse_layer_idx: bool = False
    """Also divide attention scores of layer i by i + 1."""
    reorder_and_upcast_attn: bool = False
    """Upcast attention to float32 (everything already runs in float32 here; only False is supported)."""
    summary_type: Optional[str] = None
    summary_use_proj: Optional[bool] = None
    summary_activation: Optional[str] = None
    summary_proj_to_labels: Optional[bool] = None
    summary_first_dropout: Optional[float] = None
    """Fields of GPT2DoubleHeadsModel kept only so Hugging Face config files round-trip."""
    task_specific_params: Optional[Any] = None
    """Pipeline defaults some Hub files carry; kept for round-trips."""
    bos_token_id: Optional[int] = 50256
    eos_token_id: Optional[Any] = 50256
    tie_word_embeddings: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(f"activation_function must be one of {ACTIVATIONS}, found {self.activation_function!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})"
            )
        if self.reorder_and_upcast_attn:
            raise ValueError("GPT2Config: reorder_and_upcast_attn=True is not supported; set it to false")
