"""Config of DeepSeek-V3 (DeepSeek-AI 2024), with transformers' field names."""
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional

from ..common.moe import ExpertLayout, MoeSpec
from ..llama.config import LlamaConfig

# keys of DeepSeek's own config.json (trust_remote_code era) and the values this implementation matches
_FIXED = {"scoring_func": "sigmoid", "topk_method": "noaux_tc", "moe_layer_freq": 1}


@dataclass(init=False)
class DeepseekV3Config(LlamaConfig):
    """DeepSeek-V3: multi-head latent attention (see models/common/mla.py) in every layer; the first
    ``first_k_dense_replace`` layers have a dense SwiGLU, the others ``n_routed_experts`` experts routed by
    sigmoid scores with a correction bias, group-limited top-k and ``routed_scaling_factor``, plus
    ``n_shared_experts`` always-on experts. ``head_dim`` is the rotary head (``qk_rope_head_dim``)."""

    model_type = "deepseek_v3"
    attention_class: ClassVar[str] = "MultiLatentAttention"
    aliases = {**LlamaConfig.aliases, "num_local_experts": "n_routed_experts",
               "num_mtp_layers": "num_nextn_predict_layers"}
    expert_layout: ClassVar[ExpertLayout] = ExpertLayout()  # mlp.experts.<e>.{gate,up,down}_proj.weight
    # MLA: the low-rank down projections (q_a_proj, kv_a_proj_with_mqa) are small and stay whole on every
    # device; the per-head up projections and q_proj split by heads, o_proj by its input
    tp_plan: ClassVar[Dict[str, str]] = {
        **{k: v for k, v in LlamaConfig.tp_plan.items() if ".self_attn." not in k},
        "model.layers.*.self_attn.q_proj": "colwise",
        "model.layers.*.self_attn.q_b_proj": "colwise",
        "model.layers.*.self_attn.kv_b_proj": "colwise",
        "model.layers.*.self_attn.o_proj": "rowwise",
    }

    vocab_size: int = 129280
    hidden_size: int = 7168
    intermediate_size: int = 18432
    num_hidden_layers: int = 61
    num_attention_heads: int = 128
    max_position_embeddings: int = 4096
    moe_intermediate_size: int = 2048
    """Width of each routed (and shared) expert's SwiGLU."""
    n_routed_experts: int = 256
    """Routed experts per sparse layer."""
    n_shared_experts: int = 1
    """Always-on experts per sparse layer (one SwiGLU of ``n_shared_experts * moe_intermediate_size``)."""
    num_experts_per_tok: int = 8
    """Routed experts per token (top-k)."""
    n_group: int = 8
    """Expert groups; a token's experts come from its ``topk_group`` best groups."""
    topk_group: int = 4
    """Groups a token may use."""
    routed_scaling_factor: float = 2.5
    """Multiplier of the routed experts' weights."""
    norm_topk_prob: bool = True
    """Renormalise the chosen experts' scores to sum to 1 (before the scaling factor)."""
    first_k_dense_replace: int = 3
    """Layers before this index keep a dense MLP."""
    q_lora_rank: Optional[int] = 1536
    """Rank of the low-rank query path; None: a plain q_proj."""
    kv_lora_rank: int = 512
    """Width of the compressed key/value latent (what the KV cache holds per token, with the rotary key)."""
    qk_rope_head_dim: int = 64
    """Rotary part of each query/key head (one rotary key shared by all heads)."""
    qk_nope_head_dim: int = 128
    """Non-rotary part of each query/key head."""
    v_head_dim: int = 128
    """Width of each value head."""
    qk_head_dim: Optional[int] = None
    """``qk_nope_head_dim + qk_rope_head_dim`` (derived; transformers writes it)."""
    rope_interleave: bool = True
    """Rotary weights laid out in interleaved pairs (DeepSeek's checkpoints)."""
    num_nextn_predict_layers: int = 1
    """Multi-token-prediction layers of the checkpoint; they are not used here (their tensors are skipped)."""
    output_router_logits: bool = False
    """Accepted for transformers' configs; DeepSeek-V3 balances experts with the correction bias, no aux loss."""
    scoring_func: Optional[str] = None
    topk_method: Optional[str] = None
    moe_layer_freq: Optional[int] = None
    """DeepSeek's own config.json keys; only the values DeepSeek-V3 uses are accepted."""
    aux_loss_alpha: Optional[float] = None
    seq_aux: Optional[bool] = None
    ep_size: Optional[int] = None
    """DeepSeek's own training settings; accepted and unused."""
    head_dim: Optional[int] = None
    rms_norm_eps: float = 1e-6
    bos_token_id: Optional[int] = 0
    eos_token_id: Optional[Any] = 1

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.qk_rope_head_dim
        super().__post_init__()
        name = "DeepseekV3Config"
        for key, value in (("kv_lora_rank", self.kv_lora_rank), ("qk_rope_head_dim", self.qk_rope_head_dim),
                           ("v_head_dim", self.v_head_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {key} must be a positive integer, found {value!r}")
        if not isinstance(self.qk_nope_head_dim, int) or self.qk_nope_head_dim < 0:
            raise ValueError(f"{name}: qk_nope_head_dim must be >= 0, found {self.qk_nope_head_dim!r}")
        if self.q_lora_rank is not None and (not isinstance(self.q_lora_rank, int) or self.q_lora_rank < 1):
            raise ValueError(f"{name}: q_lora_rank must be a positive integer or null (plain q_proj), "
                             f"found {self.q_lora_rank!r}")
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"{name}: qk_rope_head_dim ({self.qk_rope_head_dim}) must be even: rotary "
                             "embeddings rotate pairs of dimensions")
        if self.head_dim != self.qk_rope_head_dim:
            raise ValueError(f"{name}: head_dim ({self.head_dim}) is the rotary head and must equal "
                             f"qk_rope_head_dim ({self.qk_rope_head_dim})")
        qk = self.qk_nope_head_dim + self.qk_rope_head_dim
        if self.qk_head_dim is not None and self.qk_head_dim != qk:
            raise ValueError(f"{name}: qk_head_dim ({self.qk_head_dim}) must equal qk_nope_head_dim + "
                             f"qk_rope_head_dim ({qk})")
        self.qk_head_dim = qk
        self._given.difference_update({"qk_head_dim"} | ({"head_dim"} if self.head_dim == self.qk_rope_head_dim else set()))
        for key, expected in _FIXED.items():
            value = getattr(self, key)
            if value is not None and value != expected:
                raise ValueError(f"{name}: {key}={value!r} is not supported; DeepSeek-V3 uses {expected!r}")
        if self.first_k_dense_replace < 0:
            raise ValueError(f"{name}: first_k_dense_replace must be >= 0, found {self.first_k_dense_replace}")
        self.moe_spec().check(name, "n_routed_experts")

    def mlp_class(self, layer_idx: int) -> str:
        return "GatedMLP" if layer_idx < self.first_k_dense_replace else "SparseMoeBlock"

    def moe_spec(self) -> MoeSpec:
        return MoeSpec(num_experts=self.n_routed_experts, top_k=self.num_experts_per_tok,
                       intermediate_size=self.moe_intermediate_size, scoring="sigmoid",
                       norm_topk_prob=self.norm_topk_prob, routed_scaling_factor=self.routed_scaling_factor,
                       n_group=self.n_group, topk_group=self.topk_group,
                       shared_intermediate_size=self.moe_intermediate_size * self.n_shared_experts,
                       correction_bias=True)

    def to_hf_dict(self, architecture: Optional[str] = None) -> Dict[str, Any]:
        out = super().to_hf_dict(architecture)
        for key in ("qkv_bias", "mlp_bias"):
            out.pop(key, None)
        return out
