"""LoHa layers (PEFT's ``loha.Linear``): per adapter

    delta W = ((hada_w1_a @ hada_w1_b) * (hada_w2_a @ hada_w2_b)) * alpha / r      [out, in]

with ``hada_w1_a`` / ``hada_w2_a`` [out, r] and ``hada_w1_b`` / ``hada_w2_b`` [r, in] (a Hadamard product of
two rank-r matrices has rank up to r^2); the rest is :class:`~mindformers.tuners.lycoris.LycorisLinear`.
"""
import numpy as np
from mindspore import ops

from ..lora.layer import _kaiming_uniform, _Vector
from ..lycoris import LycorisLinear

FACTORS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


class LoHaLinear(LycorisLinear):
    """A Linear layer with LoHa adapters."""

    slots = FACTORS

    def add_adapter(self, name: str, r: int, alpha: float, config, rng: np.random.Generator) -> None:
        out, fan_in = self.out_features, self.in_features
        values = {"hada_w1_a": _kaiming_uniform(rng, (out, r)), "hada_w1_b": _kaiming_uniform(rng, (r, fan_in)),
                  "hada_w2_a": _kaiming_uniform(rng, (out, r)),
                  "hada_w2_b": np.zeros((r, fan_in)) if config.init_weights else _kaiming_uniform(rng, (r, fan_in))}
        for slot, value in values.items():
            getattr(self, slot)[name] = _Vector(value, self.weight.dtype)
        self._added(name, alpha / r, config)

    def _delta(self, name: str):
        w1 = ops.matmul(self.hada_w1_a[name].weight, self.hada_w1_b[name].weight)
        w2 = ops.matmul(self.hada_w2_a[name].weight, self.hada_w2_b[name].weight)
        return w1 * w2 * self.scaling[name]

    def delta_weight(self, name: str) -> np.ndarray:
        f = {slot: self._factor_host(slot, name) for slot in FACTORS}
        return (f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"]) * self.scaling[name]
