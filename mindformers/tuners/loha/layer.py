"""LoHa layers (PEFT's ``loha.Linear``): a Linear ([out, in]) layer plus, per adapter,

    delta W = ((hada_w1_a @ hada_w1_b) * (hada_w2_a @ hada_w2_b)) * alpha / r      [out, in]
    y = W x + b + delta W x

with ``hada_w1_a`` / ``hada_w2_a`` [out, r] and ``hada_w1_b`` / ``hada_w2_b`` [r, in] (a Hadamard product of
two rank-r matrices has rank up to r^2). Merging adds delta W to the weight (in float64 on the host).
"""
from typing import Iterable

import numpy as np
from mindspore import nn, ops

from ...models.common.layers import Conv1D, Linear
from ...utils import write_parameter
from ..lora.layer import _kaiming_uniform, _Vector
from ..tuner_layer import AdapterState, TunerLayer

FACTORS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


class LoHaLinear(nn.Cell, TunerLayer):
    """A Linear layer with LoHa adapters (its own Parameters reused, not copied)."""

    def __init__(self, base, state: AdapterState):
        super().__init__()
        if isinstance(base, Conv1D) or not isinstance(base, Linear):
            raise TypeError(f"LoHa adapts Linear layers (PEFT neither adapts GPT-2's Conv1D), not {type(base).__name__}")
        self._init_tuner_layer(state)
        self.weight, self.bias = base.weight, base.bias
        self.in_features, self.out_features = base.in_features, base.out_features
        for slot in FACTORS:
            setattr(self, slot, nn.CellDict())
        self.scaling = {}
        self.matmul_nt = ops.MatMul(transpose_b=True)

    def add_adapter(self, name: str, r: int, alpha: float, init_weights: bool, rng: np.random.Generator) -> None:
        out, fan_in = self.out_features, self.in_features
        values = {"hada_w1_a": _kaiming_uniform(rng, (out, r)), "hada_w1_b": _kaiming_uniform(rng, (r, fan_in)),
                  "hada_w2_a": _kaiming_uniform(rng, (out, r)),
                  "hada_w2_b": _kaiming_uniform(rng, (r, fan_in)) if not init_weights else np.zeros((r, fan_in))}
        for slot, value in values.items():
            getattr(self, slot)[name] = _Vector(value, self.weight.dtype)
        self.scaling[name] = alpha / r
        if name not in self.adapter_names:
            self.adapter_names.append(name)

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise ValueError(f"adapter {name!r} is merged into the weights; unmerge it before deleting it")
        for slot in FACTORS:
            del getattr(self, slot)[name]
        self.scaling.pop(name)
        self.adapter_names.remove(name)

    def _delta(self, name: str):
        w1 = ops.matmul(self.hada_w1_a[name].weight, self.hada_w1_b[name].weight)
        w2 = ops.matmul(self.hada_w2_a[name].weight, self.hada_w2_b[name].weight)
        return w1 * w2 * self.scaling[name]

    def construct(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        y = self.matmul_nt(x, self.weight)
        if self.bias is not None:
            y = y + self.bias
        for name in self.running_adapters():
            y = y + self.matmul_nt(x, self._delta(name))
        return y.reshape(shape[:-1] + (self.out_features,))

    def _delta_host(self, name: str) -> np.ndarray:
        f = {slot: getattr(self, slot)[name].weight.asnumpy().astype(np.float64) for slot in FACTORS}
        return (f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"]) * self.scaling[name]

    def merge(self, names: Iterable[str]) -> None:
        for name in names:
            if name not in self.adapter_names or name in self.merged_adapters:
                continue
            write_parameter(self.weight, (self.weight.asnumpy().astype(np.float64) + self._delta_host(name)).astype(np.float32))
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            write_parameter(self.weight, (self.weight.asnumpy().astype(np.float64) - self._delta_host(name)).astype(np.float32))

    def unwrap(self):
        base = Linear(self.in_features, self.out_features, self.bias is not None, self.weight.dtype)
        base.weight, base.bias = self.weight, self.bias
        return base
