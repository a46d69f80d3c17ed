"""AdaLoRA layers (PEFT's ``SVDLinear``): a linear layer plus, per adapter, an update in SVD form

    y = W x + b + (B (A * E)) x * lora_alpha / (ranknum + 1e-5)

with ``lora_A`` [r, in] (right singular vectors), ``lora_E`` [r, 1] (singular values), ``lora_B`` [out, r] (left
singular vectors) and ``ranknum`` = init_r, which stays the divisor when a saved adapter is shrunk to the
triplets its ``rank_pattern`` keeps. Pruning a triplet zeroes its entry of E (see ``allocator.py``).

The tensors are Parameters named after the adapter, ``<module>.lora_A.<adapter>``, as PEFT keeps them in
``ParameterDict``s (LoRA's ``lora_A.<adapter>.weight`` are Linear layers). GPT-2's Conv1D stores W as [in, out]
(``fan_in_fan_out``); the update is then transposed when merged.
"""
from typing import Dict, List, Optional

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from ..lora.layer import _set
from ..delta_layer import DeltaLinear
from ..tuner_layer import AdapterState

SLOTS = ("lora_A", "lora_E", "lora_B")
RANKNUM_EPS = 1e-5  # PEFT adds it to ranknum


class ParameterSlot(nn.Cell):
    """One Parameter per adapter, as the attribute named after the adapter (PEFT's ``ParameterDict``)."""

    def __getitem__(self, name: str) -> Parameter:
        return getattr(self, name)

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        setattr(self, name, Parameter(Tensor(np.asarray(value, np.float32)), name=name))

    def __delitem__(self, name: str) -> None:
        delattr(self, name)

    def __contains__(self, name: str) -> bool:
        return name in self._params  # pylint: disable=protected-access


class SVDLinear(DeltaLinear):
    """A Linear ([out, in]) or Conv1D ([in, out]) layer with AdaLoRA adapters; its own Parameters are reused.

    Args:
        base: the layer to adapt.
        state: the model's adapter state (which adapters run).
    """

    def __init__(self, base, state: AdapterState):
        super().__init__(base, state)
        self.lora_A, self.lora_E, self.lora_B = ParameterSlot(), ParameterSlot(), ParameterSlot()
        self.lora_dropout = nn.CellDict()
        self.r: Dict[str, int] = {}
        self.ranknum: Dict[str, float] = {}
        self.factor: Dict[str, float] = {}  # lora_alpha / (ranknum + 1e-5)
        self.rank_mask: Dict[str, Optional[np.ndarray]] = {}  # kept triplets of a full-rank adapter, if allocated

    def add_adapter(self, name: str, r: int, ranknum: int, alpha: float, dropout: float, init,
                    rng: np.random.Generator) -> None:
        """Adapter ``name`` of rank ``r`` (``ranknum``: the initial rank it divides by). PEFT's initialisation:
        E zero and A, B ~ N(0, 0.02) (the update starts at 0); ``init`` False: all three N(0, 1)."""
        std = 0.02 if init else 1.0
        self.lora_A[name] = rng.normal(0.0, std, (r, self.in_features))
        self.lora_E[name] = np.zeros((r, 1)) if init else rng.normal(0.0, 1.0, (r, 1))
        self.lora_B[name] = rng.normal(0.0, std, (self.out_features, r))
        if dropout > 0:
            self.lora_dropout[name] = nn.Dropout(p=dropout)
        scaling = alpha if alpha > 0 else float(r)  # PEFT's scaling; the division by ranknum is separate
        self.r[name], self.ranknum[name] = r, float(ranknum)
        self.factor[name] = float(np.float32(scaling) / (np.float32(ranknum) + np.float32(RANKNUM_EPS)))
        self.rank_mask[name] = None
        if name not in self.adapter_names:
            self.adapter_names.append(name)

    def delete_adapter(self, name: str) -> None:
        self._check_unmerged(name)
        for slot in (self.lora_A, self.lora_E, self.lora_B):
            del slot[name]
        if name in self.lora_dropout:
            del self.lora_dropout[name]
        for table in (self.r, self.ranknum, self.factor, self.rank_mask):
            table.pop(name, None)
        self.adapter_names.remove(name)

    def mask(self, name: str, keep: List[bool]) -> None:
        """Zero the singular values of the triplets ``keep`` drops (the rank allocation's pruning)."""
        keep = np.asarray(keep, bool)
        if keep.shape != (self.r[name],):
            raise ValueError(f"a mask of {self.r[name]} triplets was expected for adapter {name!r}, found {keep.shape}")
        e = self.lora_E[name].asnumpy()
        _set(self.lora_E[name], np.where(keep[:, None], e, 0.0))
        self.rank_mask[name] = keep

    # ------------------------------------------------------------------ math
    def orth_penalty(self, name: str):
        """||A A^T - I||_F + ||B^T B - I||_F (two terms of the regulariser's mean)."""
        if self.r[name] == 0:  # PEFT's norms of empty products
            return ops.zeros((), ms.float32)
        a, b = getattr(self.lora_A, name), getattr(self.lora_B, name)
        eye = ops.eye(self.r[name], self.r[name], a.dtype)
        return ops.sqrt(ops.square(ops.matmul(a, a.T) - eye).sum()) + ops.sqrt(ops.square(ops.matmul(b.T, b) - eye).sum())

    def adapter_output(self, name: str, x):
        if self.r[name] == 0:  # a layer the allocation emptied
            return ops.zeros((x.shape[0], self.out_features), x.dtype)
        dropped = self.lora_dropout[name](x) if name in self.lora_dropout else x
        a, e, b = getattr(self.lora_A, name), getattr(self.lora_E, name), getattr(self.lora_B, name)
        after_a = self.matmul_nt(dropped, a * e)  # [tokens, r]
        return self.matmul_nt(after_a, b) * self.factor[name]

    def delta_weight(self, name: str) -> np.ndarray:
        """B (A * E) * lora_alpha / (ranknum + 1e-5) as [out, in], float64."""
        a, e, b = (getattr(self, slot)[name].asnumpy().astype(np.float64) for slot in SLOTS)
        return (b @ (a * e)) * self.factor[name]
