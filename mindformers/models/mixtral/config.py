"""Config of Mixtral (Jiang et al. 2024): Mistral whose feed-forward layers are sparse mixtures of experts."""
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from ..common.moe import ExpertLayout, MoeSpec
from ..mistral.config import MistralConfig


@dataclass(init=False)
class MixtralConfig(MistralConfig):
    """Mixtral: every layer routes each token to ``num_experts_per_tok`` of ``num_local_experts`` SwiGLU
    experts (softmax router, top-k renormalised). Checkpoints name the block ``block_sparse_moe`` and the
    experts' projections ``w1`` (gate), ``w3`` (up) and ``w2`` (down)."""

    model_type = "mixtral"
    aliases = {**MistralConfig.aliases, "num_experts": "num_local_experts", "moe_topk": "num_experts_per_tok"}
    expert_layout: ClassVar[ExpertLayout] = ExpertLayout(("w1", "w3", "w2"), (("block_sparse_moe", "mlp"),))

    num_local_experts: int = 8
    """Experts per layer."""
    num_experts_per_tok: int = 2
    """Experts each token is routed to (top-k)."""
    output_router_logits: bool = False
    """Add the router load-balancing loss to the training loss (transformers' switch of the same name)."""
    router_aux_loss_coef: float = 0.001
    """Weight of the load-balancing loss."""
    router_jitter_noise: float = 0.0
    """Multiplicative input noise of the router during training; only 0 is supported."""
    sliding_window: Optional[int] = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1000000.0
    bos_token_id: Optional[int] = 1
    eos_token_id: Optional[Any] = 2

    def __post_init__(self):
        super().__post_init__()
        if self.router_jitter_noise:
            raise ValueError(f"MixtralConfig: router_jitter_noise must be 0 (not supported), found {self.router_jitter_noise}")
        self.moe_spec().check("MixtralConfig", "num_local_experts")

    def mlp_class(self, layer_idx: int) -> str:
        return "SparseMoeBlock"

    def moe_spec(self) -> MoeSpec:
        return MoeSpec(num_experts=self.num_local_experts, top_k=self.num_experts_per_tok,
                       intermediate_size=self.intermediate_size, norm_topk_prob=True)

    def aux_loss_settings(self):
        if not self.output_router_logits:
            return None
        return self.router_aux_loss_coef, self.num_local_experts, self.num_experts_per_tok
