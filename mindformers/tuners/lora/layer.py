"""LoRA layers (Hu et al. 2021): a linear or embedding layer plus low-rank updates kept by adapter name.

``LoraLinear`` takes over the base layer's own ``weight``/``bias`` Parameters (so the base model's tensor
names do not change) and adds, per adapter, ``lora_A.<name>`` [r, in] and ``lora_B.<name>`` [out, r]:

    y = W x + b + scaling * B A dropout(x),     scaling = alpha / r   (alpha / sqrt(r) with rsLoRA)

DoRA (Liu et al. 2024) adds a magnitude ``m`` per output row: with ``V = W + scaling * B A``,
``y = (m / ||V||_row) * (V x) + b``, computed as PEFT does without forming V x:
``y = W x + b + (m/||V|| - 1) * W x + (m/||V||) * scaling * B A x`` (the norm is not differentiated).

GPT-2's Conv1D stores ``W`` as [in, out] (``fan_in_fan_out``); A and B keep their shapes and the merged
update is ``(B A)^T``. Merging edits the base weight in place (in float64 on the host, then cast back).
"""
from typing import Dict, Iterable, Optional

import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from ...kernels import host
from ...models.common.layers import Conv1D, Embedding, Linear, product_nt
from ...utils import write_parameter
from ..tuner_layer import AdapterState, TunerLayer


class _Vector(nn.Cell):
    """Holds one Parameter called ``weight`` (DoRA magnitudes, embedding A/B), so its path reads
    ``<owner>.<adapter>.weight``."""

    def __init__(self, value: np.ndarray, dtype):
        super().__init__()
        self.weight = Parameter(Tensor(value.astype(np.float32), dtype=dtype), name="weight")


def _kaiming_uniform(rng: np.random.Generator, shape) -> np.ndarray:
    # torch.nn.Linear's default init (kaiming_uniform_ with a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    bound = 1.0 / np.sqrt(shape[1])
    return rng.uniform(-bound, bound, shape)


def _set(param: Parameter, value: np.ndarray) -> None:
    write_parameter(param, np.asarray(value, dtype=np.float32))


class LoraLinear(nn.Cell, TunerLayer):
    """A Linear ([out, in]) or Conv1D ([in, out]) layer with LoRA adapters.

    Args:
        base: the layer to adapt; its Parameters are reused, not copied.
        state: the model's adapter state (which adapters run).
    """

    def __init__(self, base, state: AdapterState):
        super().__init__()
        if not isinstance(base, (Linear, Conv1D)):
            raise TypeError(f"LoRA adapts Linear and Conv1D layers, not {type(base).__name__}")
        self._init_tuner_layer(state)
        self.weight = base.weight
        self.bias = base.bias
        self.fan_in_fan_out = isinstance(base, Conv1D)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.lora_A = nn.CellDict()
        self.lora_B = nn.CellDict()
        self.lora_dropout = nn.CellDict()
        self.lora_magnitude_vector = nn.CellDict()
        self.scaling: Dict[str, float] = {}
        self.r: Dict[str, int] = {}
        self.use_dora: Dict[str, bool] = {}
        self._dora_norms: Dict[str, np.ndarray] = {}  # the row norms a DoRA merge divided by, for unmerge
        self.matmul_nt = ops.MatMul(transpose_b=True)
        # the base product as a primitive of this layer, so that mindformers.parallel.shard can split it
        self.base_matmul = ops.MatMul() if self.fan_in_fan_out else self.matmul_nt
        self.host_linear = host.enabled() and not self.fan_in_fan_out  # as the base Linear (product_nt)

    # ------------------------------------------------------------------ adapters
    def add_adapter(self, name: str, r: int, alpha: float, scaling: float, dropout: float, init, use_dora: bool,
                    rng: np.random.Generator) -> None:
        """Create adapter ``name`` (rank ``r``) initialised per PEFT's ``init_lora_weights``."""
        dtype = self.weight.dtype
        a = Linear(self.in_features, r, False, dtype)
        b = Linear(r, self.out_features, False, dtype)
        if init == "gaussian":
            _set(a.weight, rng.normal(0.0, 1.0 / r, (r, self.in_features)))
        else:
            _set(a.weight, _kaiming_uniform(rng, (r, self.in_features)))
        _set(b.weight, _kaiming_uniform(rng, (self.out_features, r)) if init is False else np.zeros((self.out_features, r)))
        self.lora_A[name], self.lora_B[name] = a, b
        if dropout > 0:
            self.lora_dropout[name] = nn.Dropout(p=dropout)
        self.scaling[name], self.r[name], self.use_dora[name] = scaling, r, use_dora
        if use_dora:
            self.lora_magnitude_vector[name] = _Vector(self._row_norms(name), dtype)
        if name not in self.adapter_names:
            self.adapter_names.append(name)

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise ValueError(f"adapter {name!r} is merged into the weights; unmerge it before deleting it")
        for cells in (self.lora_A, self.lora_B, self.lora_dropout, self.lora_magnitude_vector):
            if name in cells:
                del cells[name]
        for table in (self.scaling, self.r, self.use_dora):
            table.pop(name, None)
        self.adapter_names.remove(name)

    # ------------------------------------------------------------------ math
    def _weight_out_in(self) -> np.ndarray:
        w = self.weight.asnumpy().astype(np.float64)
        return w.T if self.fan_in_fan_out else w

    def _delta(self, name: str) -> np.ndarray:
        """scaling * B @ A as [out, in], float64."""
        b = self.lora_B[name].weight.asnumpy().astype(np.float64)
        a = self.lora_A[name].weight.asnumpy().astype(np.float64)
        return self.scaling[name] * (b @ a)

    def _row_norms(self, name: str) -> np.ndarray:
        return np.linalg.norm(self._weight_out_in() + self._delta(name), axis=1)

    def construct(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        base = product_nt(x, self.weight, self.base_matmul, self.host_linear and not self.training)
        y = base if self.bias is None else base + self.bias
        for name in self.running_adapters():
            dropped = self.lora_dropout[name](x) if name in self.lora_dropout else x
            update = self.lora_B[name](self.lora_A[name](dropped)) * self.scaling[name]
            if self.use_dora[name]:
                y = y + self._dora_terms(name, x, dropped, base, update)
            else:
                y = y + update
        return y.reshape(shape[:-1] + (self.out_features,))

    def _dora_terms(self, name, x, dropped, base, update):
        # ||W + scaling * B A|| per output row, treated as a constant (PEFT detaches it)
        lora_weight = ops.matmul(self.lora_B[name].weight, self.lora_A[name].weight)  # [out, in]
        weight = self.weight.T if self.fan_in_fan_out else self.weight
        norm = ops.stop_gradient(ops.sqrt(ops.square(weight + lora_weight * self.scaling[name]).sum(-1)))
        scale = self.lora_magnitude_vector[name].weight / norm  # [out]
        if name in self.lora_dropout:  # the base product must see the same dropped input
            base = product_nt(dropped, self.weight, self.base_matmul, self.host_linear and not self.training)
        return (scale - 1) * base + scale * update

    # ------------------------------------------------------------------ merging
    def merge(self, names: Iterable[str]) -> None:
        """Fold adapters into the base weight (they then stop running separately)."""
        for name in names:
            if name not in self.adapter_names or name in self.merged_adapters:
                continue
            w = self._weight_out_in()
            merged = w + self._delta(name)
            if self.use_dora[name]:
                norm = np.linalg.norm(merged, axis=1)
                self._dora_norms[name] = norm
                magnitude = self.lora_magnitude_vector[name].weight.asnumpy().astype(np.float64)
                merged = merged * (magnitude / norm)[:, None]
            _set(self.weight, merged.T if self.fan_in_fan_out else merged)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Take merged adapters back out of the base weight, last merged first."""
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            w = self._weight_out_in()
            if self.use_dora[name]:
                magnitude = self.lora_magnitude_vector[name].weight.asnumpy().astype(np.float64)
                w = w / (magnitude / self._dora_norms.pop(name))[:, None]
            w = w - self._delta(name)
            _set(self.weight, w.T if self.fan_in_fan_out else w)

    def unwrap(self):
        """The plain base layer holding this layer's (possibly merged) Parameters."""
        cls = Conv1D if self.fan_in_fan_out else Linear
        if cls is Conv1D:
            base = Conv1D(self.in_features, self.out_features, self.weight.dtype)
        else:
            base = Linear(self.in_features, self.out_features, self.bias is not None, self.weight.dtype)
        base.weight, base.bias = self.weight, self.bias
        return base


class LoraEmbedding(nn.Cell, TunerLayer):
    """An embedding table with LoRA adapters: ``E[ids] + scaling * A^T[ids] B^T`` with
    ``lora_embedding_A.<name>`` [r, num_embeddings] and ``lora_embedding_B.<name>`` [dim, r] (PEFT's layout)."""

    peft_saved_base = ("weight",)  # PEFT saves an adapted embedding's table beside its factors

    def __init__(self, base: Embedding, state: AdapterState):
        super().__init__()
        if not isinstance(base, Embedding):
            raise TypeError(f"LoraEmbedding adapts Embedding layers, not {type(base).__name__}")
        self._init_tuner_layer(state)
        self.weight = base.weight
        self.num_embeddings, self.dim = base.weight.shape
        self.lora_embedding_A = nn.CellDict()
        self.lora_embedding_B = nn.CellDict()
        self.scaling: Dict[str, float] = {}
        self.r: Dict[str, int] = {}
        self.use_dora: Dict[str, bool] = {}

    def add_adapter(self, name: str, r: int, alpha: float, scaling: float, dropout: float, init, use_dora: bool,
                    rng: np.random.Generator) -> None:
        if use_dora:
            raise ValueError("DoRA is not supported on embedding layers (PEFT neither); target linear layers")
        dtype = self.weight.dtype
        # PEFT: A zeros and B normal, so the update starts at 0; init_lora_weights=False makes both random
        a = rng.normal(0.0, 1.0, (r, self.num_embeddings)) if init is False else np.zeros((r, self.num_embeddings))
        self.lora_embedding_A[name] = _Vector(a, dtype)
        self.lora_embedding_B[name] = _Vector(rng.normal(0.0, 1.0, (self.dim, r)), dtype)
        self.scaling[name], self.r[name], self.use_dora[name] = scaling, r, False
        if name not in self.adapter_names:
            self.adapter_names.append(name)

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise ValueError(f"adapter {name!r} is merged into the weights; unmerge it before deleting it")
        del self.lora_embedding_A[name]
        del self.lora_embedding_B[name]
        for table in (self.scaling, self.r, self.use_dora):
            table.pop(name, None)
        self.adapter_names.remove(name)

    def construct(self, ids):
        y = ops.gather(self.weight, ids, 0)
        for name in self.running_adapters():
            after_a = ops.gather(self.lora_embedding_A[name].weight.T, ids, 0)  # [..., r]
            y = y + ops.matmul(after_a, self.lora_embedding_B[name].weight.T) * self.scaling[name]
        return y

    def _delta(self, name: str) -> np.ndarray:
        a = self.lora_embedding_A[name].weight.asnumpy().astype(np.float64)
        b = self.lora_embedding_B[name].weight.asnumpy().astype(np.float64)
        return self.scaling[name] * (b @ a).T  # [num_embeddings, dim]

    def merge(self, names: Iterable[str]) -> None:
        for name in names:
            if name in self.adapter_names and name not in self.merged_adapters:
                _set(self.weight, self.weight.asnumpy().astype(np.float64) + self._delta(name))
                self.merged_adapters.append(name)

    def unmerge(self) -> None:
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            _set(self.weight, self.weight.asnumpy().astype(np.float64) - self._delta(name))

    def unwrap(self):
        base = Embedding(self.num_embeddings, self.dim, self.weight.dtype)
        base.weight = self.weight
        return base


LORA_LAYERS = {Linear: LoraLinear, Conv1D: LoraLinear, Embedding: LoraEmbedding}


def lora_layer_for(cell, state: AdapterState) -> Optional[nn.Cell]:
    """A LoRA layer wrapping ``cell``, or None when its kind cannot be adapted."""
    cls = LORA_LAYERS.get(type(cell))
    return None if cls is None else cls(cell, state)
