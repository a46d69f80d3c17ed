"""LoKr layers (PEFT's ``lokr.Linear``): per adapter, ``delta W = kron(W1, W2) * alpha / r`` [out, in] with

    out = a * b, in = c * d  (``factorization``, near square roots)   W1 [a, c], W2 [b, d]
    W1 = lokr_w1, or lokr_w1_a [a, r] @ lokr_w1_b [r, c]   (decompose_both and r < max(a, c) / 2)
    W2 = lokr_w2, or lokr_w2_a [b, r] @ lokr_w2_b [r, d]   (r < max(b, d) / 2)

the rest is :class:`~mindformers.tuners.lycoris.LycorisLinear`.
"""
from typing import Dict, Tuple

import numpy as np
from mindspore import ops

from ..lora.layer import _kaiming_uniform, _Vector
from ..lycoris import LycorisLinear
from ..tuner_layer import AdapterState

SLOTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")


def factorization(dimension: int, factor: int = -1) -> Tuple[int, int]:
    """Two factors of ``dimension`` (the smaller first), one near ``factor`` (-1: near the square root): PEFT's
    LyCORIS rule."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    if factor == -1:
        factor = dimension
    m, n = 1, dimension
    while m < n:
        new_m = m + 1
        while dimension % new_m:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > m + n or new_m > factor:
            break
        m, n = new_m, new_n
    return (n, m) if m > n else (m, n)


def _kron(a, b):
    """kron(a, b) of 2-D tensors."""
    rows_a, cols_a = a.shape
    rows_b, cols_b = b.shape
    out = a.reshape(rows_a, 1, cols_a, 1) * b.reshape(1, rows_b, 1, cols_b)
    return out.reshape(rows_a * rows_b, cols_a * cols_b)


class LoKrLinear(LycorisLinear):
    """A Linear layer with LoKr adapters."""

    slots = SLOTS

    def __init__(self, base, state: AdapterState):
        super().__init__(base, state)
        self.factored: Dict[str, Tuple[bool, bool]] = {}  # adapter -> (W1 factorised, W2 factorised)

    def add_adapter(self, name: str, r: int, alpha: float, config, rng: np.random.Generator) -> None:
        (a, b), (c, d) = factorization(self.out_features, config.decompose_factor), \
            factorization(self.in_features, config.decompose_factor)
        use_w1 = not (config.decompose_both and r < max(a, c) / 2)
        use_w2 = not r < max(b, d) / 2
        init = config.init_weights
        shapes = ({"lokr_w1": (a, c)} if use_w1 else {"lokr_w1_a": (a, r), "lokr_w1_b": (r, c)})
        shapes.update({"lokr_w2": (b, d)} if use_w2 else {"lokr_w2_a": (b, r), "lokr_w2_b": (r, d)})
        zero = set()
        if init is True:  # W1 starts at zero
            zero = {"lokr_w1"} if use_w1 else {"lokr_w1_a"}
        elif init == "lycoris":  # W2 starts at zero
            zero = {"lokr_w2"} if use_w2 else {"lokr_w2_b"}
        for slot, shape in shapes.items():
            value = np.zeros(shape) if slot in zero else _kaiming_uniform(rng, shape)
            getattr(self, slot)[name] = _Vector(value, self.weight.dtype)
        self.factored[name] = (not use_w1, not use_w2)
        self._added(name, alpha / r, config)

    def delete_adapter(self, name: str) -> None:
        super().delete_adapter(name)
        self.factored.pop(name)

    def _factor(self, name: str, which: str):
        if self.factored[name][0 if which == "1" else 1]:
            return ops.matmul(getattr(self, f"lokr_w{which}_a")[name].weight, getattr(self, f"lokr_w{which}_b")[name].weight)
        return getattr(self, f"lokr_w{which}")[name].weight

    def _delta(self, name: str):
        return _kron(self._factor(name, "1"), self._factor(name, "2")) * self.scaling[name]

    def delta_weight(self, name: str) -> np.ndarray:
        def factor(which):
            if self.factored[name][0 if which == "1" else 1]:
                return self._factor_host(f"lokr_w{which}_a", name) @ self._factor_host(f"lokr_w{which}_b", name)
            return self._factor_host(f"lokr_w{which}", name)

        return np.kron(factor("1"), factor("2")) * self.scaling[name]
