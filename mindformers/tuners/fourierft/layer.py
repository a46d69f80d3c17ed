"""FourierFT layers (PEFT's ``FourierFTLinear``): a Linear ([out, in]) or Conv1D ([in, out]) layer plus, per
adapter,

    S = zeros[out, in];  S[rows, cols] = fourierft_spectrum          (n_frequency entries)
    delta W = Re(ifft2(S)) * scaling                                  [out, in]
    y = W x + b + delta W x

with ``(rows, cols)`` the first ``n_frequency`` entries of ``torch.randperm(out * in)`` from a CPU generator
seeded with ``random_loc_seed`` (reproduced in numpy, mindformers.tuners.torch_random), split as
``(i // in, i % in)``. PEFT does not save them: they follow from the seed and the layer's shape. Merging
adds ``delta W`` (transposed for Conv1D) in float64 on the host.
"""
from typing import Dict

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from ..lora.layer import _Vector
from ..torch_random import randperm_prefix
from ..delta_layer import DeltaLinear
from ..tuner_layer import AdapterState

SPECTRUM = "fourierft_spectrum"


def frequencies(out_features: int, in_features: int, n_frequency: int, seed: int) -> np.ndarray:
    """The spectral entries PEFT trains: ``[n_frequency, 2]`` (row, column) pairs, int64."""
    flat = randperm_prefix(out_features * in_features, n_frequency, seed)
    return np.stack([flat // in_features, flat % in_features], axis=1)


class FourierFTLinear(DeltaLinear):
    """A Linear or Conv1D layer with FourierFT adapters.

    Args:
        base: the layer to adapt; its Parameters are reused, not copied.
        state: the model's adapter state.
    """

    def __init__(self, base, state: AdapterState):
        super().__init__(base, state)
        self.fourierft_spectrum = nn.CellDict()
        self.indices: Dict[str, Tensor] = {}  # [n_frequency, 2] int32: constants of the graph, not Parameters
        self.scaling: Dict[str, float] = {}

    def add_adapter(self, name: str, n_frequency: int, config, rng: np.random.Generator) -> None:
        size = self.out_features * self.in_features
        if not 0 < n_frequency <= size:
            raise ValueError(f"FourierFT n_frequency must be in [1, out * in = {size}] for this "
                             f"[{self.out_features}, {self.in_features}] layer, found {n_frequency}")
        self.indices[name] = Tensor(frequencies(self.out_features, self.in_features, n_frequency,
                                                config.random_loc_seed).astype(np.int32))
        spectrum = np.zeros(n_frequency) if config.init_weights else rng.standard_normal(n_frequency)
        self.fourierft_spectrum[name] = _Vector(spectrum, self.weight.dtype)
        self.scaling[name] = float(config.scaling)
        if name not in self.adapter_names:
            self.adapter_names.append(name)

    def delete_adapter(self, name: str) -> None:
        self._check_unmerged(name)
        del self.fourierft_spectrum[name]
        self.indices.pop(name)
        self.scaling.pop(name)
        self.adapter_names.remove(name)

    def _delta(self, name: str):
        spectrum = self.fourierft_spectrum[name].weight
        dense = ops.scatter_nd(self.indices[name], spectrum, (self.out_features, self.in_features))
        # the transform in complex64 whatever the weights' dtype (as PEFT: ifft2 has no half precision)
        delta = ops.real(ops.ifft2(ops.cast(dense, ms.complex64))) * self.scaling[name]  # [out, in]
        return ops.cast(delta, spectrum.dtype)

    def adapter_output(self, name: str, x):
        return self.matmul_nt(x, self._delta(name))

    def delta_weight(self, name: str) -> np.ndarray:
        """``delta W`` of adapter ``name`` as [out, in], float64."""
        dense = np.zeros((self.out_features, self.in_features))
        rows, cols = self.indices[name].asnumpy().T
        dense[rows, cols] = self.fourierft_spectrum[name].weight.asnumpy()
        return np.fft.ifft2(dense).real * self.scaling[name]
