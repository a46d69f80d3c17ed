"""GaLore's settings (Zhao et al. 2024, "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank
Projection"): SWIFT's ``GaLoreConfig`` fields, read from HF's TrainingArguments spelling
(``optim="galore_adamw"``, ``optim_target_modules``, ``optim_args="rank=..., update_proj_gap=..., scale=...,
proj_type=..."``)."""
import re
from dataclasses import dataclass
from typing import Any, List, Optional, Union

PROJ_TYPES = ("std", "reverse_std", "left", "right")
# HF's optim_args keys for GaLore -> our fields (transformers.Trainer.get_optimizer_cls_and_kwargs)
OPTIM_ARGS = {"rank": "rank", "update_proj_gap": "update_proj_gap", "scale": "galore_scale",
              "proj_type": "proj_type"}


@dataclass
class GaLoreConfig:
    """Which weights GaLore projects and how (field names as SWIFT's ``GaLoreConfig``)."""

    rank: int = 128
    """Rank r of the projection: moments are kept as [r, n] (or [m, r]) instead of [m, n]."""
    target_modules: Optional[Union[str, List[str]]] = None
    """Linear layers whose weights are projected: path substrings (a list), one regular expression matched
    against the whole path (a string), or "all-linear" (every Linear but the output head)."""
    update_proj_gap: int = 50
    """Steps between two SVDs of the gradient (the projection is recomputed at steps 0, gap, 2 gap, ...)."""
    galore_scale: float = 1.0
    """Factor on the projected-back update (GaLore's alpha)."""
    proj_type: str = "std"
    """Which side is projected: "std" (right singular vectors when rows >= columns, left otherwise, so the
    moments take the smaller shape), "reverse_std", "left", "right"."""
    optim_per_parameter: bool = False
    """SWIFT's one-optimizer-per-parameter mode (a torch memory trick around its backward hooks)."""

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"GaLoreConfig.rank must be a positive integer, found {self.rank!r}")
        if not isinstance(self.update_proj_gap, int) or self.update_proj_gap <= 0:
            raise ValueError(f"GaLoreConfig.update_proj_gap must be a positive integer, found {self.update_proj_gap!r}")
        if self.proj_type not in PROJ_TYPES:
            raise ValueError(f"GaLoreConfig.proj_type must be one of {PROJ_TYPES}, found {self.proj_type!r} "
                             "('full', projecting both sides, is not supported)")
        if self.optim_per_parameter:
            raise ValueError("GaLoreConfig.optim_per_parameter=True is not supported: the compiled training step "
                             "updates every parameter in one graph already (no per-parameter optimizers to split)")
        if not self.target_modules:
            raise ValueError("GaLore needs target_modules (HF: optim_target_modules), e.g. ['attn', 'mlp'] or "
                             "'all-linear'")

    def matches(self, path: str) -> bool:
        """Whether the Linear layer at ``path`` is a target."""
        targets = self.target_modules
        if targets == "all-linear":
            return not path.endswith(("lm_head", "score", "classifier"))
        if isinstance(targets, str):
            return re.fullmatch(targets, path) is not None
        return any(t in path for t in targets)

    @classmethod
    def from_training_args(cls, args: Any) -> "GaLoreConfig":
        """From TrainingArguments' ``optim_target_modules`` and ``optim_args`` (HF's names)."""
        values = {}
        for item in filter(None, (args.optim_args or "").replace(" ", "").split(",")):
            key, sep, value = item.partition("=")
            if not sep or key not in OPTIM_ARGS:
                raise ValueError(f"optim_args: {item!r} is not a GaLore setting; expected key=value with key in "
                                 f"{sorted(OPTIM_ARGS)} (e.g. 'rank=64, update_proj_gap=100, scale=0.25, proj_type=std')")
            values[OPTIM_ARGS[key]] = value
        typed = {"rank": int, "update_proj_gap": int, "galore_scale": float, "proj_type": str}
        return cls(target_modules=args.optim_target_modules,
                   **{name: typed[name](value) for name, value in values.items()})
