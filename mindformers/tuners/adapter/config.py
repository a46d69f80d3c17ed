"""SWIFT's Adapter settings (ms-swift ``AdapterConfig``; Houlsby et al. 2019), saved with ``"swift_type": "ADAPTER"``."""
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Union

from ..config import TunerConfig

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish", "tanh", "sigmoid")


@dataclass
class AdapterConfig(TunerConfig):
    """A bottleneck MLP added to the output of chosen modules: ``y + linear2(act(linear1(y)))``."""

    peft_type: ClassVar[str] = "ADAPTER"
    pet_aliases: ClassVar[Dict[str, str]] = {"adapter_dim": "adapter_length"}

    dim: Optional[int] = None
    """Width of the hidden state the adapter reads (the model's hidden_size for a decoder MLP)."""
    target_modules: Optional[Union[List[str], str]] = None
    """Modules whose output passes the adapter: a regex that must match the whole name, or a list of name
    endings (SWIFT's rule: ``module_key.endswith(entry)``)."""
    hidden_pos: Optional[Union[int, str]] = None
    """Which element of a tuple output is the hidden state (0 for a decoder layer); None: the output is a tensor."""
    method_name: str = "forward"
    """The method whose output is adapted: ``forward`` (a Cell's ``construct``)."""
    adapter_length: int = 128
    """Bottleneck width."""
    act_layer: str = "gelu"
    """Activation between the two linear layers (transformers' ACT2CLS names)."""

    def __post_init__(self):
        if self.method_name not in ("forward", "construct"):
            raise ValueError(f"AdapterConfig.method_name {self.method_name!r} is not supported: MindSpore Cells adapt "
                             "their forward pass ('forward' / 'construct')")
        if self.act_layer not in ACTIVATIONS:
            raise ValueError(f"AdapterConfig.act_layer must be one of {ACTIVATIONS}, found {self.act_layer!r}")
        if self.dim is not None and self.dim <= 0 or self.adapter_length <= 0:
            raise ValueError(f"AdapterConfig.dim and adapter_length must be positive, found {self.dim}, "
                             f"{self.adapter_length}")

    def to_dict(self) -> Dict[str, Any]:
        data = super().to_dict()
        data["swift_type"] = self.peft_type
        return data
