"""Config of the Llama family (Llama 2/3, SmolLM2, Qwen2 via ``qkv_bias``)."""
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Dict, List, Optional

from ...configuration_utils import PretrainedConfig
from ..common.layers import check_rope_scaling


@dataclass(init=False)
class LlamaConfig(PretrainedConfig):
    """Llama: pre-RMSNorm decoder, rotary positions, grouped-query attention, SwiGLU feed-forward.

    Field names follow Hugging Face ``LlamaConfig``; MindFormers' spellings (``num_layers``,
    ``num_heads``, ``n_kv_heads``, ``seq_length``, ``theta``, ...) are accepted too.
    """

    model_type = "llama"
    processor_type = "LlamaProcessor"
    aliases = {"theta": "rope_theta", "ffn_hidden_size": "intermediate_size", "norm_eps": "rms_norm_eps"}
    # the decoder's parts (see models/common/decoder.py); a family changes these, not the decoder
    attention_class: ClassVar[str] = "Attention"
    qk_norm: ClassVar[bool] = False
    # how model parallelism splits each module (see mindformers/parallel/plan.py); * = a layer index
    tp_plan: ClassVar[Dict[str, str]] = {
        "model.embed_tokens": "vocab",
        "model.layers.*.self_attn.q_proj": "colwise",
        "model.layers.*.self_attn.k_proj": "colwise",
        "model.layers.*.self_attn.v_proj": "colwise",
        "model.layers.*.self_attn.o_proj": "rowwise",
        "model.layers.*.mlp.gate_proj": "colwise",
        "model.layers.*.mlp.up_proj": "colwise",
        "model.layers.*.mlp.down_proj": "rowwise",
        "model.layers.*.mlp.experts": "experts",
        "model.layers.*.mlp.shared_experts.gate_proj": "colwise",
        "model.layers.*.mlp.shared_experts.up_proj": "colwise",
        "model.layers.*.mlp.shared_experts.down_proj": "rowwise",
        "lm_head": "head",
        "score": "replicate",
    }

    intermediate_size: int = 11008
    """Width of the SwiGLU feed-forward layer."""
    num_key_value_heads: Optional[int] = None
    """Key/value heads for grouped-query attention; None means one per query head."""
    head_dim: Optional[int] = None
    """Width of one attention head; None means ``hidden_size // num_attention_heads``."""
    hidden_act: str = "silu"
    """Activation of the gated feed-forward layer."""
    rms_norm_eps: float = 1e-6
    """Epsilon of RMSNorm."""
    rope_theta: float = 10000.0
    """Base of the rotary frequencies."""
    rope_scaling: Optional[Dict[str, Any]] = None
    """Rotary scaling: ``{"rope_type": "linear"|"llama3", "factor": ..., ...}`` or None."""
    attention_bias: bool = False
    """Bias on the q, k, v and o projections (Hugging Face ``attention_bias``)."""
    qkv_bias: bool = False
    """Bias on the q, k and v projections only, as in Qwen2."""
    mlp_bias: bool = False
    """Bias on the feed-forward projections."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities during training."""
    pretraining_tp: int = 1
    """Tensor-parallel degree used in pretraining; only 1 is supported (it changes nothing else)."""
    bos_token_id: Optional[int] = 1
    eos_token_id: Optional[Any] = 2

    def __post_init__(self):
        super().__post_init__()
        name = type(self).__name__
        for field_name in ("intermediate_size", "num_key_value_heads", "head_dim"):
            value = getattr(self, field_name)
            if value is not None and value <= 0:
                raise ValueError(f"{name}.{field_name} must be a positive integer, found {value!r}")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"{name}: hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                    f"({self.num_attention_heads}) to derive head_dim; change one of them, or set head_dim "
                    f"explicitly (the attention width is then num_attention_heads * head_dim)"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        # values equal to what would be derived count as derived (config.json files write them out), so
        # replace(num_heads=..., hidden_size=...) derives them again
        # (only where the field's default is None, i.e. derived: Qwen3's head_dim defaults to 128)
        derived = {f.name for f in fields(self) if f.default is None}
        if self.num_key_value_heads == self.num_attention_heads and "num_key_value_heads" in derived:
            self._given.discard("num_key_value_heads")
        if self.head_dim * self.num_attention_heads == self.hidden_size and "head_dim" in derived:
            self._given.discard("head_dim")
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act must be 'silu' for {type(self).__name__}, found {self.hidden_act!r}")
        if self.pretraining_tp != 1:
            raise ValueError(f"pretraining_tp must be 1, found {self.pretraining_tp}")
        self.rope_scaling = check_rope_scaling(self.rope_scaling, type(self).__name__)

    def mlp_class(self, layer_idx: int) -> str:
        """The registered feed-forward block of layer ``layer_idx``."""
        return "GatedMLP"

    @classmethod
    def normalize_hf_dict(cls, config: Dict[str, Any]) -> Dict[str, Any]:
        # transformers v5 writes RoPE as {"rope_parameters": {"rope_theta": ..., "rope_type": ..., ...}}
        rope = config.pop("rope_parameters", None)
        if rope is not None:
            rope = dict(rope)
            if "rope_theta" in rope:
                config.setdefault("rope_theta", rope.pop("rope_theta"))
            if rope.get("rope_type", rope.get("type", "default")) != "default":
                config.setdefault("rope_scaling", rope)
        return config

    def to_hf_dict(self, architecture: Optional[str] = None) -> Dict[str, Any]:
        out = super().to_hf_dict(architecture)
        # v5 reads the v4 top-level rope_theta/rope_scaling; write both forms so either version loads it.
        out["rope_parameters"] = {"rope_theta": self.rope_theta, **(self.rope_scaling or {"rope_type": "default"})}
        if not self.qkv_bias:
            out.pop("qkv_bias")
        return out


def check_sliding_window(config) -> None:
    """A sliding window must be a positive length (None: full attention)."""
    window = config.sliding_window
    if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 1):
        raise ValueError(f"{type(config).__name__}: sliding_window must be a positive number of tokens or null "
                         f"(full attention), found {window!r}")


@dataclass(init=False)
class Qwen2Config(LlamaConfig):
    """Qwen2: Llama with a bias on the q, k and v projections, and optional sliding-window attention on
    the layers from ``max_window_layers`` on (``use_sliding_window``)."""

    model_type = "qwen2"
    requires_qkv_bias: ClassVar[bool] = True

    use_sliding_window: bool = False
    """Sliding-window attention on layers ``max_window_layers`` and up."""
    sliding_window: Optional[int] = None
    """Window length (tokens a query sees, itself included) when ``use_sliding_window`` is set."""
    max_window_layers: int = 28
    """Layers below this index keep full attention when sliding windows are on."""
    layer_types: Optional[List[str]] = None
    """Per-layer attention kind ("full_attention" / "sliding_attention"); derived when None."""
    qkv_bias: bool = True
    rms_norm_eps: float = 1e-6
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[Any] = None

    def __post_init__(self):
        super().__post_init__()
        if not self.use_sliding_window:
            self.sliding_window = None  # as transformers: the window only counts when switched on
        check_sliding_window(self)
        if self.layer_types is None or self.layer_types == self._default_layer_types():
            self.layer_types = self._default_layer_types()
            self._given.discard("layer_types")  # as derived: follows num_hidden_layers in replace()
        kinds = {"full_attention", "sliding_attention"}
        if len(self.layer_types) != self.num_hidden_layers or not set(self.layer_types) <= kinds:
            raise ValueError(f"{type(self).__name__}: layer_types must list one of {sorted(kinds)} per layer "
                             f"({self.num_hidden_layers}), found {self.layer_types}")
        if "sliding_attention" in self.layer_types and self.sliding_window is None:
            raise ValueError(f"{type(self).__name__}: layer_types has sliding_attention layers but no sliding_window "
                             "is set (use_sliding_window: true, sliding_window: N)")
        if self.requires_qkv_bias and not self.qkv_bias:
            raise ValueError("Qwen2Config: Qwen2 always has a q/k/v bias; qkv_bias must be true")

    def _default_layer_types(self) -> List[str]:
        return ["sliding_attention" if self.sliding_window is not None and i >= self.max_window_layers
                else "full_attention" for i in range(self.num_hidden_layers)]

    def to_hf_dict(self, architecture: Optional[str] = None) -> Dict[str, Any]:
        out = super().to_hf_dict(architecture)
        out.pop("qkv_bias", None)
        if self.layer_types == self._default_layer_types():
            out.pop("layer_types")  # transformers derives the same list
        return out
