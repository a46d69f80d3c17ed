"""IA3 layers: a linear layer whose output (attention projections) or input (feed-forward layers) is
multiplied by a learned vector per adapter, as PEFT's ``ia3.Linear`` does:

    y = (W x + b) * l             l = ia3_l [out, 1]     (``is_feedforward`` False; the bias is scaled too)
    y = W (x * l) + b             l = ia3_l [1, in]      (``is_feedforward`` True)

Several active adapters multiply their vectors. Merging scales the weight in place (``W * l`` with
broadcasting, the bias too for output scaling; GPT-2's [in, out] Conv1D weights take ``l^T``); unmerging
divides by ``l + 1e-8`` as PEFT does.
"""
from typing import Iterable

import numpy as np
from mindspore import nn, ops

from ...kernels import host
from ...models.common.layers import Conv1D, Linear, product_nt
from ..lora.layer import _Vector
from ..tuner_layer import AdapterState, TunerLayer


class IA3Linear(nn.Cell, TunerLayer):
    """A Linear ([out, in]) or Conv1D ([in, out]) layer with IA3 vectors ``ia3_l.<adapter>.weight``.

    Args:
        base: the layer to adapt; its Parameters are reused, not copied.
        state: the model's adapter state.
        is_feedforward: scale the input (True) or the output (False).
    """

    def __init__(self, base, state: AdapterState, is_feedforward: bool):
        super().__init__()
        if not isinstance(base, (Linear, Conv1D)):
            raise TypeError(f"IA3 adapts Linear and Conv1D layers, not {type(base).__name__}")
        self._init_tuner_layer(state)
        self.weight, self.bias = base.weight, base.bias
        self.fan_in_fan_out = isinstance(base, Conv1D)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.is_feedforward = is_feedforward
        self.ia3_l = nn.CellDict()
        self.base_matmul = ops.MatMul() if self.fan_in_fan_out else ops.MatMul(transpose_b=True)
        self.host_linear = host.enabled() and not self.fan_in_fan_out  # as the base Linear (product_nt)

    def add_adapter(self, name: str, init_weights: bool, rng: np.random.Generator) -> None:
        shape = (1, self.in_features) if self.is_feedforward else (self.out_features, 1)
        value = np.ones(shape) if init_weights else rng.standard_normal(shape)
        self.ia3_l[name] = _Vector(value, self.weight.dtype)
        if name not in self.adapter_names:
            self.adapter_names.append(name)

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise ValueError(f"adapter {name!r} is merged into the weights; unmerge it before deleting it")
        del self.ia3_l[name]
        self.adapter_names.remove(name)

    def construct(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        running = self.running_adapters()
        scale = None
        for name in running:
            vector = self.ia3_l[name].weight.reshape(-1)
            scale = vector if scale is None else scale * vector
        if scale is not None and self.is_feedforward:
            x = x * scale
        y = product_nt(x, self.weight, self.base_matmul, self.host_linear and not self.training)
        if self.bias is not None:
            y = y + self.bias
        if scale is not None and not self.is_feedforward:
            y = y * scale
        return y.reshape(shape[:-1] + (self.out_features,))

    # ------------------------------------------------------------------ merging
    def _scale_weights(self, vector: np.ndarray, divide: bool) -> None:
        from ...utils import write_parameter

        weight = self.weight.asnumpy().astype(np.float64)
        factor = vector.T if self.fan_in_fan_out else vector  # [out, 1] / [1, in] against [out, in]
        write_parameter(self.weight, (weight / factor if divide else weight * factor).astype(np.float32))
        if self.bias is not None and not self.is_feedforward:
            bias = self.bias.asnumpy().astype(np.float64)
            flat = vector.reshape(-1)
            write_parameter(self.bias, (bias / flat if divide else bias * flat).astype(np.float32))

    def merge(self, names: Iterable[str]) -> None:
        for name in names:
            if name not in self.adapter_names or name in self.merged_adapters:
                continue
            self._scale_weights(self.ia3_l[name].weight.asnumpy().astype(np.float64), divide=False)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            self._scale_weights(self.ia3_l[name].weight.asnumpy().astype(np.float64) + 1e-8, divide=True)

    def unwrap(self):
        """The plain base layer holding this layer's (possibly merged) Parameters."""
        if self.fan_in_fan_out:
            base = Conv1D(self.in_features, self.out_features, self.weight.dtype)
        else:
            base = Linear(self.in_features, self.out_features, self.bias is not None, self.weight.dtype)
        base.weight, base.bias = self.weight, self.bias
        return base
