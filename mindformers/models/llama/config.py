"""Config of the Llama family (Llama 2/3, SmolLM2, Qwen2 via ``qkv_bias``)."""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ...configuration_utils import PretrainedConfig

ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(init=False)
class LlamaConfig(PretrainedConfig):
    """Llama: pre-RMSNorm decoder, rotary positions, grouped-query attention, SwiGLU feed-forward.

    Field names follow Hugging Face ``LlamaConfig``; MindFormers' spellings (``num_layers``,
    ``num_heads``, ``n_kv_heads``, ``seq_length``, ``theta``, ...) are accepted too.
    """

    model_type = "llama"
    processor_type = "LlamaProcessor"
    aliases = {"theta": "rope_theta", "ffn_hidden_size": "intermediate_size", "norm_eps": "rms_norm_eps"}

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
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act must be 'silu' for {type(self).__name__}, found {self.hidden_act!r}")
        if self.pretraining_tp != 1:
            raise ValueError(f"pretraining_tp must be 1, found {self.pretraining_tp}")
        if self.rope_scaling is not None:
            scaling = dict(self.rope_scaling)
            rope_type = scaling.pop("rope_type", scaling.pop("type", "default"))
            if rope_type not in ROPE_TYPES:
                raise ValueError(f"rope_scaling rope_type must be one of {ROPE_TYPES}, found {rope_type!r}")
            self.rope_scaling = None if rope_type == "default" else {"rope_type": rope_type, **scaling}

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


@dataclass(init=False)
class Qwen2Config(LlamaConfig):
    """Qwen2: Llama with a bias on the q, k and v projections (sliding-window attention is not supported)."""

    model_type = "qwen2"

    use_sliding_window: bool = False
    """Sliding-window attention; only False is supported."""
    sliding_window: Optional[int] = None
    """Window length when ``use_sliding_window`` is set (unused here)."""
    max_window_layers: int = 28
    """Layers using full attention when sliding windows are on (unused here)."""
    layer_types: Optional[List[str]] = None
    """Per-layer attention kind written by transformers v5; only "full_attention" is supported."""
    qkv_bias: bool = True
    rms_norm_eps: float = 1e-6
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[Any] = None

    def __post_init__(self):
        super().__post_init__()
        if self.use_sliding_window:
            raise ValueError("Qwen2Config: use_sliding_window=True is not supported; set it to false")
        if self.layer_types and set(self.layer_types) != {"full_attention"}:
            raise ValueError(f"Qwen2Config: only full_attention layers are supported, found {set(self.layer_types)}")
        if not self.qkv_bias:
            raise ValueError("Qwen2Config: Qwen2 always has a q/k/v bias; qkv_bias must be true")

    def to_hf_dict(self, architecture: Optional[str] = None) -> Dict[str, Any]:
        out = super().to_hf_dict(architecture)
        out.pop("qkv_bias", None)
        return out
