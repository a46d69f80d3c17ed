"""LoRA settings (Hu et al. 2021), with PEFT's field names; ``LoRAConfig`` is the SWIFT spelling."""
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Union

from ..config import TunerConfig

INIT_CHOICES = (True, False, "gaussian")
BIAS_CHOICES = ("none", "all", "lora_only")


@dataclass
class LoraConfig(TunerConfig):
    """Low-rank adapters ``W x + (alpha / r) * B A x`` on chosen linear and embedding layers."""

    peft_type: ClassVar[str] = "LORA"
    pet_aliases: ClassVar[Dict[str, str]] = {"lora_rank": "r", "rank": "r"}
    inert_fields: ClassVar[Dict[str, tuple]] = {
        "alora_invocation_tokens": (None,), "arrow_config": (None,), "corda_config": (None,),
        "ensure_weight_tying": (False,), "eva_config": (None,), "kasa_config": (None,),
        "layer_replication": (None,), "loftq_config": ({}, None), "lora_bias": (False,),
        "lora_ga_config": (None,), "megatron_config": (None,), "megatron_core": ("megatron.core", None),
        "monteclora_config": (None,), "trainable_token_indices": (None,),
        "use_bdlora": (None, False), "use_qalora": (False,), "velora_config": (None,),
        "qalora_group_size": (16, None),
    }

    r: int = 8
    """Rank of the update."""
    target_modules: Optional[Union[List[str], str]] = None
    """Module names to adapt: a list of names or name suffixes, a regex that must match the whole name, or
    "all-linear" (every linear layer but the output head). None: the family's default (q/v projections)."""
    target_parameters: Optional[List[str]] = None
    """Parameters to adapt that are not linear layers (PEFT 0.21): MoE experts ``"mlp.experts.gate_up_proj"``,
    ``"mlp.experts.down_proj"`` and routers ``"gate.weight"``, matched as ``<module>.<param>`` or its ending."""
    exclude_modules: Optional[Union[List[str], str]] = None
    """Modules never adapted, matched like target_modules."""
    lora_alpha: float = 8
    """Scale numerator: the update is multiplied by lora_alpha / r (or / sqrt(r) with use_rslora)."""
    lora_dropout: float = 0.0
    """Dropout on the adapter's input during training."""
    fan_in_fan_out: bool = False
    """The target stores its weight [in, out] (GPT-2's Conv1D); set automatically for those layers."""
    bias: str = "none"
    """Which biases train and are saved with the adapter: "none", "all", or "lora_only" (adapted layers)."""
    use_rslora: bool = False
    """Rank-stabilised scaling lora_alpha / sqrt(r) (Kalajdzievski 2023)."""
    modules_to_save: Optional[List[str]] = None
    """Extra modules trained in full and saved with the adapter (e.g. a classifier's "score")."""
    init_lora_weights: Union[bool, str] = True
    """True: A Kaiming-uniform, B zero (the update starts at 0); "gaussian": A ~ N(0, 1/r); False: random B."""
    layers_to_transform: Optional[Union[List[int], int]] = None
    """Only adapt these layer indices."""
    layers_pattern: Optional[Union[List[str], str]] = None
    """Name of the layer list holding the indices ("layers", "h"); found automatically when None."""
    rank_pattern: Dict[str, int] = field(default_factory=dict)
    """Per-module ranks: {regex: r}, matched as (.*\\.)?KEY$ against module names."""
    alpha_pattern: Dict[str, float] = field(default_factory=dict)
    """Per-module alphas, matched like rank_pattern."""
    use_dora: bool = False
    """Weight-decomposed LoRA (Liu et al. 2024): a learned magnitude per output row."""

    def __post_init__(self):
        if not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"LoRA rank r must be a positive integer, found {self.r!r}")
        for key, rank in self.rank_pattern.items():
            if not isinstance(rank, int) or rank <= 0:
                raise ValueError(f"rank_pattern[{key!r}] must be a positive integer, found {rank!r}")
        if self.bias not in BIAS_CHOICES:
            raise ValueError(f"bias must be one of {BIAS_CHOICES}, found {self.bias!r}")
        if self.init_lora_weights not in INIT_CHOICES:
            raise ValueError(f"init_lora_weights must be one of {INIT_CHOICES} (PiSSA, OLoRA, LoftQ and other "
                             f"initialisations are not supported), found {self.init_lora_weights!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), found {self.lora_dropout!r}")
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)
        if isinstance(self.target_parameters, str):
            self.target_parameters = [self.target_parameters]
        if self.target_parameters is not None:
            self.target_parameters = sorted(set(self.target_parameters))
            if self.lora_dropout or self.use_dora or self.fan_in_fan_out:
                raise ValueError("target_parameters need lora_dropout 0, use_dora false and fan_in_fan_out false "
                                 "(the update is added to the Parameter itself; PEFT refuses these too)")

    def rank_and_alpha(self, module_name: str):
        """(r, lora_alpha) for ``module_name`` after rank_pattern / alpha_pattern."""
        from ..targets import pattern_value

        return (pattern_value(self.rank_pattern, module_name, self.r),
                pattern_value(self.alpha_pattern, module_name, self.lora_alpha))

    def scaling(self, r: int, alpha: float) -> float:
        return alpha / (r ** 0.5) if self.use_rslora else alpha / r


@dataclass
class LoRAConfig(LoraConfig):
    """SWIFT's LoRA config: PEFT's fields plus SWIFT's LoRA+ settings; saved with ``"swift_type": "LORA"``."""

    lora_dtype: Optional[str] = None
    """dtype of the adapter weights (None: the base layer's)."""
    lorap_lr_ratio: Optional[float] = None
    """LoRA+ (Hayou et al. 2024): learning-rate ratio of B over A."""
    lorap_emb_lr: float = 1e-6
    """LoRA+ learning rate of embedding adapters."""

    def to_dict(self) -> Dict[str, Any]:
        data = super().to_dict()
        data["swift_type"] = self.peft_type
        return data
