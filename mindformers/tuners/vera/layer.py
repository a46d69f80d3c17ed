"""VeRA layers (PEFT's ``vera.Linear``): a Linear ([out, in]) or Conv1D ([in, out]) layer plus, per adapter,

    y = W x + b + lambda_b * (B[:out] (lambda_d * (A[:, :in] dropout(x))))
    delta W = diag(lambda_b) B[:out] diag(lambda_d) A[:, :in]                        [out, in]

with ``vera_A`` [r, max_in] and ``vera_B`` [max_out, r] the adapter's frozen projections, one pair for the whole
model (every layer holds the same two Parameters and slices them to its size), and the trained vectors
``vera_lambda_b`` [out] and ``vera_lambda_d`` [r] its own. Merging adds ``delta W`` (transposed for Conv1D)
in float64 on the host.
"""
from typing import Dict

import numpy as np
from mindspore import nn

from ..lora.layer import _Vector
from ..delta_layer import DeltaLinear
from ..tuner_layer import AdapterState

PROJECTIONS = ("vera_A", "vera_B")
VECTORS = ("vera_lambda_b", "vera_lambda_d")


class VeraLinear(DeltaLinear):
    """A Linear or Conv1D layer with VeRA adapters.

    Args:
        base: the layer to adapt; its Parameters are reused, not copied.
        state: the model's adapter state.
    """

    def __init__(self, base, state: AdapterState):
        super().__init__(base, state)
        for slot in PROJECTIONS + VECTORS + ("vera_dropout",):
            setattr(self, slot, nn.CellDict())
        self.r: Dict[str, int] = {}

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
        self._check_unmerged(name)
        for slot in PROJECTIONS + VECTORS + ("vera_dropout",):
            if name in getattr(self, slot):
                del getattr(self, slot)[name]
        self.r.pop(name)
        self.adapter_names.remove(name)

    def adapter_output(self, name: str, x):
        a = self.vera_A[name].weight[:, :self.in_features]  # [r, in]
        b = self.vera_B[name].weight[:self.out_features, :]  # [out, r]
        dropped = self.vera_dropout[name](x) if name in self.vera_dropout else x
        hidden = self.matmul_nt(dropped, a) * self.vera_lambda_d[name].weight  # [tokens, r]
        return self.matmul_nt(hidden, b) * self.vera_lambda_b[name].weight

    def delta_weight(self, name: str) -> np.ndarray:
        """``delta W`` of adapter ``name`` as [out, in], float64."""
        host = {slot: getattr(self, slot)[name].weight.asnumpy().astype(np.float64) for slot in PROJECTIONS + VECTORS}
        b = host["vera_lambda_b"][:, None] * host["vera_B"][:self.out_features]
        a = host["vera_lambda_d"][:, None] * host["vera_A"][:, :self.in_features]
        return b @ a
