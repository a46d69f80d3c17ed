"""Config of Qwen3-MoE: Qwen3 attention; sparse experts in the layers ``decoder_sparse_step`` picks."""
from dataclasses import dataclass, field
from typing import Any, ClassVar, List, Optional

from ..common.moe import ExpertLayout, MoeSpec
from ..qwen3.config import Qwen3Config


@dataclass(init=False)
class Qwen3MoeConfig(Qwen3Config):
    """Qwen3-MoE: layer i has a sparse block of ``num_experts`` experts (``moe_intermediate_size`` wide,
    softmax router, top ``num_experts_per_tok``, renormalised when ``norm_topk_prob``) when it is not in
    ``mlp_only_layers`` and ``(i + 1) % decoder_sparse_step == 0``; the others keep a dense SwiGLU of
    ``intermediate_size``."""

    model_type = "qwen3_moe"
    aliases = {**Qwen3Config.aliases, "moe_topk": "num_experts_per_tok", "num_local_experts": "num_experts"}
    expert_layout: ClassVar[ExpertLayout] = ExpertLayout()  # mlp.experts.<e>.{gate,up,down}_proj.weight

    num_experts: int = 128
    """Experts per sparse layer."""
    num_experts_per_tok: int = 8
    """Experts each token is routed to (top-k)."""
    moe_intermediate_size: int = 768
    """Width of each expert's SwiGLU."""
    norm_topk_prob: bool = False
    """Renormalise the top-k router probabilities to sum to 1."""
    decoder_sparse_step: int = 1
    """Every ``decoder_sparse_step``-th layer is sparse."""
    mlp_only_layers: List[int] = field(default_factory=list)
    """Layers that keep a dense MLP."""
    output_router_logits: bool = False
    """Add the router load-balancing loss to the training loss (transformers' switch of the same name)."""
    router_aux_loss_coef: float = 0.001
    """Weight of the load-balancing loss."""
    intermediate_size: int = 6144
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[Any] = None

    def __post_init__(self):
        super().__post_init__()
        self.mlp_only_layers = list(self.mlp_only_layers or [])
        if self.decoder_sparse_step < 1:
            raise ValueError(f"Qwen3MoeConfig: decoder_sparse_step must be >= 1, found {self.decoder_sparse_step}")
        self.moe_spec().check("Qwen3MoeConfig", "num_experts")

    def is_sparse(self, layer_idx: int) -> bool:
        return (layer_idx not in self.mlp_only_layers and self.num_experts > 0
                and (layer_idx + 1) % self.decoder_sparse_step == 0)

    def mlp_class(self, layer_idx: int) -> str:
        return "SparseMoeBlock" if self.is_sparse(layer_idx) else "GatedMLP"

    def moe_spec(self) -> MoeSpec:
        return MoeSpec(num_experts=self.num_experts, top_k=self.num_experts_per_tok,
                       intermediate_size=self.moe_intermediate_size, norm_topk_prob=self.norm_topk_prob)

    def aux_loss_settings(self):
        if not self.output_router_logits or not any(map(self.is_sparse, range(self.num_hidden_layers))):
            return None
        return self.router_aux_loss_coef, self.num_experts, self.num_experts_per_tok
