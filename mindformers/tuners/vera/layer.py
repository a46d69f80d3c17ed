"""VeRA layers (PEFT's ``vera.Linear``): a Linear ([out, in]) or Conv1D ([in, out]) layer plus, per adapter,

    y = W x + b + lambda_b * (B[:out] (lambda_d * (A[:, :in] dropout(x))))
    delta W = diag(lambda_b) B[:out] diag(lambda_d) A[:, :in]                        [out, in]

with ``vera_A`` [r, max_in] and ``vera_B`` [max_out, r] the adapter's frozen projections, one pair for the whole
model (every layer holds the same two Parameters and slices them to its size), and the trained vectors
``vera_lambda_b`` [out] and ``vera_lambda_d`` [r] its own. Merging adds ``delta W`` (transposed for Conv1D)
in float64 on the host.
"""
from typing import Dict, Iterable

import numpy as np
from mindspore import nn, ops

from ...models.common.layers import Conv1D, Linear
from ...utils import write_parameter
from ..lora.layer import _Vector
from ..tuner_layer import AdapterState, TunerLayer

PROJECTIONS = ("vera_A", "vera_B")
VECTORS = ("vera_lambda_b", "vera_lambda_d")


class VeraLinear(nn.Cell, TunerLayer):
    """A Linear or Conv1D layer with VeRA adapters.

    Args:
        base: the layer to adapt; its Parameters are reused, not copied.
        state: the model's adapter state.
    """

    def __init__(self, base, state: AdapterState):
        super().__init__()
        if not isinstance(base, (Linear, Conv1D)):
            raise TypeError(f"VeRA adapts Linear and Conv1D layers, not {type(base).__name__}")
        self._init_tuner_layer(state)
        self.weight, self.bias = base.weight, base.bias
        self.fan_in_fan_out = isinstance(base, Conv1D)
        self.in_features, self.out_features = base.in_features, base.out_features
        for slot in PROJECTIONS + VECTORS + ("vera_dropout",):
            setattr(self, slot, nn.CellDict())
        self.r: Dict[str, int] = {}
        self.base_matmul = ops.MatMul() if self.fan_in_fan_out else ops.MatMul(transpose_b=True)
        self.matmul_nt = ops.MatMul(transpose_b=True)

    def add_adapter(self, name: str, vera_a: _Vector, vera_b: _Vector, config, rng: np.random.Generator) -> None:
        """Adapter ``name`` on the shared projections ``vera_a`` [r, >= in] / ``vera_b`` [>= out, r]."""
        (r, max_in), (max_out, _) = vera_a.weight.shape, vera_b.weight.shape
        if max_in < self.in_features or max_out < self.out_features:
            raise ValueError(f"VeRA projections [{r}, {max_in}] / [{max_out}, {r}] are smaller than this layer "
                             f"[{self.out_features}, {self.in_features}]")
        self.vera_A[name], self.vera_B[name] = vera_a, vera_b
        if config.init_weights:
            lambda_b, lambda_d = np.zeros(self.out_features), np.full(r, config.d_initial)
        else:
            lambda_b, lambda_d = np.ones(self.out_features), rng.standard_normal(r)
        self.vera_lambda_b[name] = _Vector(lambda_b, self.weight.dtype)
        self.vera_lambda_d[name] = _Vector(lambda_d, self.weight.dtype)
        if config.vera_dropout > 0:
            self.vera_dropout[name] = nn.Dropout(p=config.vera_dropout)
        self.r[name] = r
        if name not in self.adapter_names:
            self.adapter_names.append(name)

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise ValueError(f"adapter {name!r} is merged into the weights; unmerge it before deleting it")
        for slot in PROJECTIONS + VECTORS + ("vera_dropout",):
            if name in getattr(self, slot):
                del getattr(self, slot)[name]
        self.r.pop(name)
        self.adapter_names.remove(name)

    def construct(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        y = self.base_matmul(x, self.weight)
        if self.bias is not None:
            y = y + self.bias
        for name in self.running_adapters():
            a = self.vera_A[name].weight[:, :self.in_features]  # [r, in]
            b = self.vera_B[name].weight[:self.out_features, :]  # [out, r]
            dropped = self.vera_dropout[name](x) if name in self.vera_dropout else x
            hidden = self.matmul_nt(dropped, a) * self.vera_lambda_d[name].weight  # [tokens, r]
            y = y + self.matmul_nt(hidden, b) * self.vera_lambda_b[name].weight
        return y.reshape(shape[:-1] + (self.out_features,))

    # ------------------------------------------------------------------ merging
    def delta_weight(self, name: str) -> np.ndarray:
        """``delta W`` of adapter ``name`` as [out, in], float64."""
        host = {slot: getattr(self, slot)[name].weight.asnumpy().astype(np.float64) for slot in PROJECTIONS + VECTORS}
        b = host["vera_lambda_b"][:, None] * host["vera_B"][:self.out_features]
        a = host["vera_lambda_d"][:, None] * host["vera_A"][:, :self.in_features]
        return b @ a

    def _add_to_weight(self, delta: np.ndarray) -> None:
        write_parameter(self.weight, (self.weight.asnumpy().astype(np.float64)
                                      + (delta.T if self.fan_in_fan_out else delta)).astype(np.float32))

    def merge(self, names: Iterable[str]) -> None:
        for name in names:
            if name not in self.adapter_names or name in self.merged_adapters:
                continue
            self._add_to_weight(self.delta_weight(name))
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        while self.merged_adapters:
            self._add_to_weight(-self.delta_weight(self.merged_adapters.pop()))

    def unwrap(self):
        """The plain base layer holding this layer's (possibly merged) Parameters."""
        if self.fan_in_fan_out:
            base = Conv1D(self.in_features, self.out_features, self.weight.dtype)
        else:
            base = Linear(self.in_features, self.out_features, self.bias is not None, self.weight.dtype)
        base.weight, base.bias = self.weight, self.bias
        return base
