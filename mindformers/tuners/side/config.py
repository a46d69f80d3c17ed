"""SWIFT's Side-Tuning settings (ms-swift ``SideConfig``; Zhang et al. 2019), saved with ``"swift_type": "SIDE"``."""
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional, Tuple, Union

from ..config import TunerConfig

SIDE_NETS = ("mlp",)
# SWIFT's other side networks read images: FCN4 is four Conv2d layers over [batch, 3, H, W] pooled to one
# vector per image, AlexNet is torchvision's pretrained image network. A decoder's module input is
# [batch, seq, hidden], so neither has a meaning here.
IMAGE_SIDE_NETS = ("fcn4", "alexnet")


@dataclass
class SideConfig(TunerConfig):
    """A side network beside one module: ``out = a * module(x) + (1 - a) * side_net(x)``, ``a = sigmoid(alpha)``
    with a learned scalar ``alpha`` (0 at the start, so both halves weigh 0.5)."""

    peft_type: ClassVar[str] = "SIDE"
    # SwiftConfig's key-mapping field (module names for ms-swift's model-type tables): written null as SWIFT
    # writes it; a mapping would rename modules, which is not implemented
    inert_fields: ClassVar[Dict[str, Tuple[Any, ...]]] = {"model_key_mapping": (None,)}

    dim: Optional[int] = None
    """Width of the hidden state the side network reads and writes (default: the model's hidden_size)."""
    target_modules: Optional[str] = None
    """The module(s) whose output is blended: a regex that must match the whole module path (SWIFT's
    ``re.fullmatch``), e.g. ``r"model\\.layers\\.\\d+"`` or ``r"model\\.layers\\.2\\.mlp"``."""
    side_module_name: str = "mlp"
    """The side network: ``"mlp"`` (SWIFT's ``Mlp``: fc1 -> GELU -> fc2, dim -> dim -> dim). SWIFT defaults to
    ``"fcn4"``, an image network; it and ``"alexnet"`` are refused for decoders."""
    source_hidden_pos: Union[int, str] = 0
    """Which input of the target module the side network reads: a position in its call, or the name of a
    required argument of its ``construct`` (``"x"``)."""
    target_hidden_pos: int = 0
    """Which element of the target module's output is blended when it returns a tuple (0: a decoder layer's
    hidden states); ignored when the output is one tensor."""

    def __post_init__(self):
        name = str(self.side_module_name).lower()
        if name in IMAGE_SIDE_NETS:
            raise ValueError(f"SideConfig.side_module_name {self.side_module_name!r} is one of SWIFT's image side "
                             f"networks (convolutions over [batch, 3, H, W]); decoders' hidden states are "
                             f"[batch, seq, hidden], use one of {SIDE_NETS}")
        if name not in SIDE_NETS:
            raise ValueError(f"SideConfig.side_module_name must be one of {SIDE_NETS} (SWIFT's image networks "
                             f"{IMAGE_SIDE_NETS} are refused for decoders), found {self.side_module_name!r}")
        self.side_module_name = name
        if self.target_modules is not None and not isinstance(self.target_modules, str):
            raise ValueError("SideConfig.target_modules is one regex matched against whole module paths (SWIFT's "
                             f"rule), found {type(self.target_modules).__name__} {self.target_modules!r}")
        if self.dim is not None and self.dim <= 0:
            raise ValueError(f"SideConfig.dim must be positive, found {self.dim}")
        if isinstance(self.target_hidden_pos, str):
            raise ValueError(f"SideConfig.target_hidden_pos {self.target_hidden_pos!r}: outputs here are tensors or "
                             "tuples, not dicts (SWIFT's ModelOutput keys); give the element's index (0 for a "
                             "decoder layer)")
        if isinstance(self.source_hidden_pos, bool) or not isinstance(self.source_hidden_pos, (int, str)) or \
                isinstance(self.source_hidden_pos, int) and self.source_hidden_pos < 0 or \
                not isinstance(self.target_hidden_pos, int) or self.target_hidden_pos < 0:
            raise ValueError("SideConfig.source_hidden_pos must be an argument index or name and target_hidden_pos "
                             f"an index, found {self.source_hidden_pos!r} and {self.target_hidden_pos!r}")

    def to_dict(self) -> Dict[str, Any]:
        data = super().to_dict()
        data["swift_type"] = self.peft_type
        return data
