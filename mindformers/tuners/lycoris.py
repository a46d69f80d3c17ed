"""What the LyCORIS methods (LoHa, LoKr) share, as PEFT's ``lycoris_utils``: their config fields, a Linear layer
whose adapters each add a computed ``delta W`` [out, in] (``y = W x + b + delta W x``, a
:class:`~mindformers.tuners.delta_layer.DeltaLinear`; in training, PEFT's rank and module dropouts), and putting
such layers into a model. A method subclasses
:class:`LycorisLinear` with its slots, ``add_adapter``, ``_delta`` (in the graph) and ``delta_weight`` (numpy)."""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

import numpy as np
from mindspore import nn, ops

from .config import TunerConfig
from .delta_layer import DeltaLinear
from .targets import match_linear_layers, pattern_value, seeded_rng
from .tuner_layer import AdapterState, rename_parameters, replace_module


@dataclass
class LycorisConfig(TunerConfig):
    """Fields of every LyCORIS method (PEFT's ``LycorisConfig`` and the target fields of its subclasses)."""

    r: int = 8
    """Rank of the factorised matrices."""
    alpha: float = 8
    """Scale numerator: the update is multiplied by alpha / r."""
    rank_dropout: float = 0.0
    """Probability of dropping each row of the update in a training step (PEFT's rank dropout)."""
    module_dropout: float = 0.0
    """Probability of skipping the whole update in a training step."""
    target_modules: Optional[Union[List[str], str]] = None
    """Module names to adapt (as LoRA's); None: the family's default (PEFT uses LoRA's table)."""
    exclude_modules: Optional[Union[List[str], str]] = None
    """Modules never adapted."""
    layers_to_transform: Optional[Union[List[int], int]] = None
    """Only adapt these layer indices."""
    layers_pattern: Optional[Union[List[str], str]] = None
    """Name of the layer list holding the indices."""
    rank_pattern: Dict[str, int] = field(default_factory=dict)
    """Per-module ranks: {regex: r}, matched as (.*\\.)?KEY$."""
    alpha_pattern: Dict[str, float] = field(default_factory=dict)
    """Per-module alphas, matched like rank_pattern."""
    modules_to_save: Optional[List[str]] = None
    """Extra modules trained in full and saved with the adapter."""

    def __post_init__(self):
        if isinstance(self.target_modules, (set, tuple)):  # PEFT writes sets as lists; accept either
            self.target_modules = list(self.target_modules)
        for name in ("rank_dropout", "module_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be in [0, 1), found {getattr(self, name)}")
        if self.r <= 0:
            raise ValueError(f"{type(self).__name__}.r must be a positive integer, found {self.r}")


class LycorisLinear(DeltaLinear):
    """A Linear layer (its own Parameters reused) whose adapters each add ``_delta(name)`` to the weight."""

    slots = ()  # the CellDicts holding the method's tensors, by adapter name
    adapts_conv1d = False
    rescales_rank_dropout = True  # PEFT's LoHa divides the kept rows by their fraction; LoKr asks its config

    def __init__(self, base, state: AdapterState):
        super().__init__(base, state)
        for slot in self.slots:
            setattr(self, slot, nn.CellDict())
        self.scaling: Dict[str, float] = {}
        self.dropouts: Dict[str, tuple] = {}  # adapter -> (rank_dropout, module_dropout, rescale kept rows)

    def _added(self, name: str, scaling: float, config: LycorisConfig) -> None:
        self.scaling[name] = scaling
        self.dropouts[name] = (config.rank_dropout, config.module_dropout,
                               getattr(config, "rank_dropout_scale", self.rescales_rank_dropout))
        if name not in self.adapter_names:
            self.adapter_names.append(name)

    def delete_adapter(self, name: str) -> None:
        self._check_unmerged(name)
        for slot in self.slots:
            if name in getattr(self, slot):
                del getattr(self, slot)[name]
        self.scaling.pop(name)
        self.dropouts.pop(name)
        self.adapter_names.remove(name)

    def _delta(self, name: str):
        """Adapter ``name``'s ``delta W`` [out, in] in the graph."""
        raise NotImplementedError

    def _dropped(self, name: str, delta):
        """PEFT's training-time dropouts of adapter ``name``'s update [out, in]: each row kept with probability
        1 - rank_dropout (the kept rows divided by their fraction when rescaling), the whole update skipped with
        probability module_dropout."""
        rank_dropout, module_dropout, rescale = self.dropouts[name]
        if rank_dropout > 0:
            keep = (ops.rand(delta.shape[0]) > rank_dropout).astype(delta.dtype)
            if rescale:
                keep = keep / keep.mean()
            delta = delta * keep.reshape(-1, 1)
        if module_dropout > 0:
            delta = delta * (ops.rand(1) > module_dropout).astype(delta.dtype)
        return delta

    def _factor_host(self, slot: str, name: str) -> np.ndarray:
        return getattr(self, slot)[name].weight.asnumpy().astype(np.float64)

    def adapter_output(self, name: str, x):
        delta = self._delta(name)
        if self.training:
            delta = self._dropped(name, delta)
        return self.matmul_nt(x, delta)


def inject_lycoris(model: nn.Cell, config: LycorisConfig, adapter_name: str, state: AdapterState,
                   seed: Optional[int], layer_class) -> List[str]:
    """Add adapter ``adapter_name`` to every layer ``config`` targets (ranks and alphas by rank_pattern /
    alpha_pattern), wrapping plain Linear layers in ``layer_class``; returns the adapted module names."""
    matched, layers = match_linear_layers(model, config, config.peft_type, layer_class)
    rng = seeded_rng(seed)
    for name in matched:
        layer = layers[name]
        if not isinstance(layer, layer_class):
            layer = layer_class(layer, state)
            replace_module(model, name, layer)
        r, alpha = pattern_value(config.rank_pattern, name, config.r), pattern_value(config.alpha_pattern, name, config.alpha)
        layer.add_adapter(adapter_name, r, alpha, config, rng)
    rename_parameters(model)
    return matched
