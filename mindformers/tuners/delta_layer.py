"""Tuner layers on a Linear (weight [out, in]) or GPT-2 Conv1D ([in, out]) layer whose adapters each add an update
``delta W`` [out, in] (LoHa, LoKr, VeRA, FourierFT, AdaLoRA): the base product, merging (``delta_weight(name)``
on the host in float64, transposed for Conv1D), unmerging and unwrapping are shared; a method gives its
per-adapter term ``adapter_output(name, x)`` and its ``delta_weight(name)``."""
from typing import Iterable

import numpy as np
from mindspore import nn, ops

from ..kernels import host
from ..models.common.layers import Conv1D, Linear, product_nt
from ..utils import write_parameter
from .tuner_layer import AdapterState, TunerLayer


class DeltaLinear(nn.Cell, TunerLayer):
    """``y = W x + b + sum over running adapters of adapter_output(name, x)``, with ``W``'s Parameters reused.

    Args:
        base: the Linear (or, when ``adapts_conv1d``, Conv1D) layer to adapt.
        state: the model's adapter state.
    """

    adapts_conv1d = True  # PEFT's LyCORIS methods do not adapt GPT-2's Conv1D

    def __init__(self, base, state: AdapterState):
        super().__init__()
        if not isinstance(base, (Linear, Conv1D)) or (isinstance(base, Conv1D) and not self.adapts_conv1d):
            kinds = "Linear and Conv1D layers" if self.adapts_conv1d else "Linear layers (not GPT-2's Conv1D)"
            raise TypeError(f"{type(self).__name__} adapts {kinds}, not {type(base).__name__}")
        self._init_tuner_layer(state)
        self.weight, self.bias = base.weight, base.bias
        self.fan_in_fan_out = isinstance(base, Conv1D)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.matmul_nt = ops.MatMul(transpose_b=True)
        self.base_matmul = ops.MatMul() if self.fan_in_fan_out else self.matmul_nt
        self.host_linear = host.enabled() and not self.fan_in_fan_out  # as the base Linear (product_nt)

    def adapter_output(self, name: str, x):
        """Adapter ``name``'s term for inputs ``x`` [tokens, in]: [tokens, out]."""
        raise NotImplementedError

    def delta_weight(self, name: str) -> np.ndarray:
        """Adapter ``name``'s ``delta W`` as [out, in], float64 (what merging adds)."""
        raise NotImplementedError

    def construct(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        y = product_nt(x, self.weight, self.base_matmul, self.host_linear and not self.training)
        if self.bias is not None:
            y = y + self.bias
        for name in self.running_adapters():
            y = y + self.adapter_output(name, x)
        return y.reshape(shape[:-1] + (self.out_features,))

    def _add_to_weight(self, delta: np.ndarray) -> None:
        weight = self.weight.asnumpy().astype(np.float64) + (delta.T if self.fan_in_fan_out else delta)
        write_parameter(self.weight, weight.astype(np.float32))

    def merge(self, names: Iterable[str]) -> None:
        for name in names:
            if name in self.adapter_names and name not in self.merged_adapters:
                self._add_to_weight(self.delta_weight(name))
                self.merged_adapters.append(name)

    def unmerge(self) -> None:
        while self.merged_adapters:
            self._add_to_weight(-self.delta_weight(self.merged_adapters.pop()))

    def _check_unmerged(self, name: str) -> None:
        if name in self.merged_adapters:
            raise ValueError(f"adapter {name!r} is merged into the weights; unmerge it before deleting it")

    def unwrap(self):
        """The plain base layer holding this layer's (possibly merged) Parameters."""
        if self.fan_in_fan_out:
            base = Conv1D(self.in_features, self.out_features, self.weight.dtype)
        else:
            base = Linear(self.in_features, self.out_features, self.bias is not None, self.weight.dtype)
        base.weight, base.bias = self.weight, self.bias
        return base
