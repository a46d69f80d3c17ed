"""Tensor (model) parallelism that runs on CPU under msrun: Megatron-style layers with explicit collectives
(Shoeybi et al. 2019), built from the same ``tp_plan`` data the semi-automatic plan uses.

MindSpore refuses ``semi_auto_parallel`` on CPU, but ``AllReduce`` / ``AllGather`` run under msrun and
communication groups can be made. So each rank of a tensor-parallel group holds slices of the split layers
and the layers talk through two custom-gradient cells (a plain ``AllReduce`` in the graph would all-reduce
its gradient again and double it):

- ``CopyToTP`` ("f"): identity forward, all-reduce of the gradient backward; at the input of every
  column-parallel layer (and on replicated weights used inside a split region, e.g. Qwen3's q/k norms, whose
  gradients are otherwise partial).
- ``ReduceFromTP`` ("g"): all-reduce forward, identity backward; at the output of every row-parallel layer.

Styles: ``colwise`` keeps rows (output features) ``[r * out/mp, (r+1) * out/mp)`` of ``[out, in]`` (Conv1D:
columns of ``[in, out]``); fused projections keep that slice of each of their parts (GPT-2's ``c_attn`` is
q|k|v, experts' ``gate_up_proj`` is gate|up); ``rowwise`` keeps input features and all-reduces the output;
``vocab`` / ``head`` split the vocabulary when ``vocab_emb_dp`` is false (masked lookup + all-reduce; logits
gathered with ``AllGather``); ``experts`` split every expert's width. Attention then runs on
``heads / mp`` local heads. Everything else is replicated and gets the same gradient on every rank.

A LoRA layer on a split linear follows its base: on a column-parallel layer A is whole (its gradient
all-reduced) and B sliced; on a row-parallel layer A is sliced and B whole. Adapters are applied before the
split; :func:`gather_state` rebuilds whole tensors (for checkpoints) on every rank.
"""
from typing import Dict, List, Tuple

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from ..models.common.attention import Attention
from ..models.common.layers import Conv1D, Embedding, Linear, RMSNorm
from ..models.common.moe import Experts
from ..tuners.lora.layer import LoraLinear
from ..tuners.tuner_layer import TunerLayer
from .plan import module_style

# fused projections: how many equal parts their split dimension holds
_FUSED_PARTS = {"c_attn": 3, "gate_up_proj": 2}


class CopyToTP(nn.Cell):
    """Identity forward; all-reduce of the gradient over the tensor-parallel group backward."""

    def __init__(self, group: str):
        super().__init__()
        self.all_reduce = ops.AllReduce(group=group)

    def construct(self, x):
        return x

    def bprop(self, x, out, dout):
        return (self.all_reduce(dout),)


class ReduceFromTP(nn.Cell):
    """All-reduce over the tensor-parallel group forward; identity backward."""

    def __init__(self, group: str):
        super().__init__()
        self.all_reduce = ops.AllReduce(group=group)

    def construct(self, x):
        return self.all_reduce(x)

    def bprop(self, x, out, dout):
        return (dout,)


class GatherFromTP(nn.Cell):
    """Concatenate the ranks' slices of the last dimension forward; keep this rank's slice of the gradient
    backward. (On CPU ``AllGather`` runs only on the world group, so each rank puts its slice in place in a
    zero tensor and the group sums them with ``AllReduce``.)"""

    def __init__(self, group: str, rank: int, size: int):
        super().__init__()
        self.all_reduce = ops.AllReduce(group=group)
        self.rank, self.size = rank, size

    def construct(self, x):
        shape = x.shape
        width = shape[-1]
        left = ops.zeros(shape[:-1] + (self.rank * width,), x.dtype)
        right = ops.zeros(shape[:-1] + ((self.size - 1 - self.rank) * width,), x.dtype)
        return self.all_reduce(ops.cat((left, x, right), -1))

    def bprop(self, x, out, dout):
        width = x.shape[-1]
        return (dout[..., self.rank * width:(self.rank + 1) * width],)


def _slice(array: np.ndarray, dim: int, rank: int, size: int, parts: int = 1) -> np.ndarray:
    """This rank's slice of ``dim``; a fused dimension of ``parts`` equal parts is sliced part by part."""
    pieces = np.split(array, parts, axis=dim)
    return np.concatenate([np.split(p, size, axis=dim)[rank] for p in pieces], axis=dim)


def _unslice(pieces: List[np.ndarray], dim: int, parts: int = 1) -> np.ndarray:
    """Inverse of :func:`_slice` given every rank's slice, in rank order."""
    per_rank = [np.split(p, parts, axis=dim) for p in pieces]
    return np.concatenate([np.concatenate([r[i] for r in per_rank], axis=dim) for i in range(parts)], axis=dim)


def _sliced(param: Parameter, dim: int, rank: int, size: int, parts: int = 1) -> Parameter:
    """A Parameter holding this rank's slice of ``param`` (same leaf name, dtype and ``requires_grad``)."""
    value = _slice(param.asnumpy(), dim, rank, size, parts)
    return Parameter(Tensor(value, param.dtype), name=param.name.rpartition(".")[2],
                     requires_grad=param.requires_grad)


class ColumnParallelLinear(Linear):
    """A Linear (or Conv1D) keeping this rank's output features; the input passes ``CopyToTP``."""

    def __init__(self, base, group: str, rank: int, size: int, parts: int = 1):
        nn.Cell.__init__(self)
        conv = isinstance(base, Conv1D)
        self.conv = conv
        self.in_features, self.out_features = base.in_features, base.out_features // size
        self.weight = _sliced(base.weight, 1 if conv else 0, rank, size, parts)
        self.bias = None if base.bias is None else _sliced(base.bias, 0, rank, size, parts)
        self.matmul = ops.MatMul() if conv else ops.MatMul(transpose_b=True)
        self.copy = CopyToTP(group)
        self.tp_layout = ("colwise", 1 if conv else 0, parts)

    def construct(self, x):
        shape = x.shape
        y = self.matmul(self.copy(x).reshape(-1, shape[-1]), self.weight)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(shape[:-1] + (self.out_features,))


class RowParallelLinear(Linear):
    """A Linear (or Conv1D) keeping this rank's input features; partial outputs are all-reduced, then the
    (whole) bias added."""

    def __init__(self, base, group: str, rank: int, size: int):
        nn.Cell.__init__(self)
        conv = isinstance(base, Conv1D)
        self.in_features, self.out_features = base.in_features // size, base.out_features
        self.weight = _sliced(base.weight, 0 if conv else 1, rank, size)
        self.bias = base.bias
        self.matmul = ops.MatMul() if conv else ops.MatMul(transpose_b=True)
        self.reduce = ReduceFromTP(group)
        self.tp_layout = ("rowwise", 0 if conv else 1, 1)

    def construct(self, x):
        shape = x.shape
        y = self.reduce(self.matmul(x.reshape(-1, shape[-1]), self.weight))
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(shape[:-1] + (self.out_features,))


class ParallelLoraLinear(LoraLinear):
    """A :class:`~mindformers.tuners.lora.layer.LoraLinear` split like its base layer.

    Column-parallel: the base keeps its output rows, each ``lora_B`` the same rows, ``lora_A`` stays whole;
    ``A x`` passes ``CopyToTP``, so A's gradient (partial on each rank, through its slice of B) is summed over
    the group and equal everywhere. Row-parallel: the base and each ``lora_A`` keep their input columns, ``A x``
    is all-reduced (``ReduceFromTP``) before the whole ``lora_B``. Merging works on the slices (the slice of
    ``B A`` is ``B_slice A`` / ``B A_slice``). DoRA (whole-row norms) is not split.
    """

    def __init__(self, base: LoraLinear, style: str, group: str, rank: int, size: int, parts: int = 1):
        nn.Cell.__init__(self)
        if any(base.use_dora.values()):
            raise NotImplementedError("DoRA layers are not split by tensor parallelism on CPU (their magnitudes "
                                      "need whole-row norms); train DoRA with data parallelism")
        if base.merged_adapters:
            raise NotImplementedError("unmerge the adapters before splitting the model")
        self._init_tuner_layer(base._adapter_state)
        self.adapter_names = list(base.adapter_names)
        self.fan_in_fan_out, self.style = base.fan_in_fan_out, style
        conv, column = base.fan_in_fan_out, style == "colwise"
        self.in_features = base.in_features if column else base.in_features // size
        self.out_features = base.out_features // size if column else base.out_features
        # the base weight's split dimension: [out, in] (Conv1D [in, out])
        weight_dim = (1 if conv else 0) if column else (0 if conv else 1)
        self.weight = _sliced(base.weight, weight_dim, rank, size, parts if column else 1)
        self.bias = base.bias if base.bias is None or not column else _sliced(base.bias, 0, rank, size, parts)
        self.lora_A, self.lora_B = nn.CellDict(), nn.CellDict()
        self.lora_dropout, self.lora_magnitude_vector = base.lora_dropout, nn.CellDict()
        self.scaling, self.r, self.use_dora, self._dora_norms = dict(base.scaling), dict(base.r), dict(base.use_dora), {}
        layout = {"weight": (style, weight_dim, parts if column else 1)}
        if column and self.bias is not None:
            layout["bias"] = (style, 0, parts)
        for name in base.adapter_names:
            a, b = base.lora_A[name], base.lora_B[name]
            if column:
                self.lora_A[name] = a
                self.lora_B[name] = _sliced_linear(b, 0, rank, size, parts)
                layout[f"lora_B.{name}.weight"] = (style, 0, parts)
            else:
                self.lora_A[name] = _sliced_linear(a, 1, rank, size)
                self.lora_B[name] = b
                layout[f"lora_A.{name}.weight"] = (style, 1, 1)
        self.matmul_nt = ops.MatMul(transpose_b=True)
        self.matmul = ops.MatMul() if conv else self.matmul_nt
        self.copy, self.copy_lora = CopyToTP(group), CopyToTP(group)
        self.reduce, self.reduce_lora = ReduceFromTP(group), ReduceFromTP(group)
        self.tp_layout = layout

    def add_adapter(self, *args, **kwargs) -> None:
        raise NotImplementedError("add adapters before the model is split for tensor parallelism")

    def unwrap(self):
        raise NotImplementedError("a LoRA layer split for tensor parallelism is not unwrapped; gather the weights "
                                  "(TensorParallelRun.gather) and merge them in one process")

    def construct(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        column = self.style == "colwise"
        y = self.matmul(self.copy(x) if column else x, self.weight)
        if not column:
            y = self.reduce(y)
        if self.bias is not None:
            y = y + self.bias
        for name in self.running_adapters():
            dropped = self.lora_dropout[name](x) if name in self.lora_dropout else x
            a = self.lora_A[name](dropped)
            a = self.copy_lora(a) if column else self.reduce_lora(a)
            y = y + self.lora_B[name](a) * self.scaling[name]
        return y.reshape(shape[:-1] + (self.out_features,))


def _sliced_linear(base: Linear, dim: int, rank: int, size: int, parts: int = 1) -> Linear:
    """A bias-free Linear holding slice ``rank`` of ``base``'s [out, in] weight along ``dim``."""
    weight = _sliced(base.weight, dim, rank, size, parts)
    out = Linear(weight.shape[1], weight.shape[0], False, base.weight.dtype)
    out.weight = weight
    return out


class VocabParallelEmbedding(Embedding):
    """This rank's rows of the table; ids outside them look up zeros and the ranks' rows are summed."""

    def __init__(self, base: Embedding, group: str, rank: int, size: int):
        nn.Cell.__init__(self)
        vocab = base.weight.shape[0]
        self.start, self.rows = rank * vocab // size, vocab // size
        self.weight = _sliced(base.weight, 0, rank, size)
        self.reduce = ReduceFromTP(group)
        self.tp_layout = ("vocab", 0, 1)

    def construct(self, ids):
        local = ids - self.start
        inside = ops.logical_and(local >= 0, local < self.rows)
        rows = ops.gather(self.weight, ops.where(inside, local, ops.zeros_like(local)), 0)
        return self.reduce(rows * inside.astype(rows.dtype).expand_dims(-1))


class VocabParallelHead(Linear):
    """The output projection keeping this rank's vocabulary rows; logits gathered across the group."""

    whole_product = False

    def __init__(self, base: Linear, group: str, rank: int, size: int):
        nn.Cell.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = _sliced(base.weight, 0, rank, size)
        self.bias = None
        self.matmul = ops.MatMul(transpose_b=True)
        self.copy = CopyToTP(group)
        self.gather = GatherFromTP(group, rank, size)
        self.tp_layout = ("head", 0, 1)

    def construct(self, x):
        shape = x.shape
        y = self.matmul(self.copy(x).reshape(-1, shape[-1]), self.weight)
        return self.gather(y).reshape(shape[:-1] + (self.out_features,))


class TensorParallelExperts(Experts):
    """Every expert keeps this rank's slice of its width: gate|up rows (part by part) and down columns; the
    input passes ``CopyToTP`` and the summed output ``ReduceFromTP``."""

    def __init__(self, base: Experts, group: str, rank: int, size: int):
        nn.Cell.__init__(self)
        self.num_experts, self.width, self.hidden = base.num_experts, base.width // size, base.hidden
        self.gate_up_proj = _sliced(base.gate_up_proj, 1, rank, size, 2)
        self.down_proj = _sliced(base.down_proj, 2, rank, size)
        self.take_compute(base)
        # the routing weights come from the whole hidden state and are used on this rank's slice: their
        # gradient is partial, like the input's
        self.copy, self.copy_weights, self.reduce = CopyToTP(group), CopyToTP(group), ReduceFromTP(group)
        self.tp_layout = {"gate_up_proj": ("experts", 1, 2), "down_proj": ("experts", 2, 1)}

    def construct(self, x, weights):
        return self.reduce(super().construct(self.copy(x), self.copy_weights(weights)))


class NormInsideSplit(RMSNorm):
    """An RMSNorm applied to split heads (Qwen3's q/k norms): its weight's gradient is all-reduced."""

    def __init__(self, base: RMSNorm, group: str):
        nn.Cell.__init__(self)
        self.eps, self.weight = base.eps, base.weight
        self.copy = CopyToTP(group)

    def construct(self, x):
        dtype = x.dtype
        x32 = x.astype(ms.float32)
        x32 = x32 * ops.rsqrt(ops.square(x32).mean(-1, keep_dims=True) + self.eps)
        return self.copy(self.weight) * x32.astype(dtype)


def _replace(model: nn.Cell, path: str, new: nn.Cell) -> None:
    from ..tuners.tuner_layer import replace_module

    replace_module(model, path, new)


def apply_tensor_parallel(model: nn.Cell, vocab_emb_dp: bool, group: str, rank: int, size: int) -> List[str]:
    """Split ``model`` (in place) for tensor-parallel rank ``rank`` of ``size`` in communication group ``group``
    after its family's ``tp_plan``. Returns the split module paths.

    Raises:
        NotImplementedError for families whose layers have no tensor-parallel form here (multi-head latent
        attention), naming them.
    """
    config = model.config
    if getattr(config, "attention_class", "Attention") != "Attention":
        raise NotImplementedError(f"tensor parallelism on CPU does not split {config.attention_class} yet "
                                  f"({type(model).__name__}); use data parallelism, or the semi-automatic plan on Ascend/GPU")
    if getattr(config, "tie_word_embeddings", False) and not vocab_emb_dp:
        raise NotImplementedError("a tied output embedding with vocab_emb_dp false is not split on CPU; "
                                  "set vocab_emb_dp: true")
    cells = dict(model.cells_and_names())
    unsplit = sorted({f"{type(cell).__name__} at {path}" for path, cell in cells.items() if isinstance(cell, TunerLayer)
                      and not (isinstance(cell, LoraLinear) and module_style(config, path) in ("colwise", "rowwise")
                               and not any(cell.use_dora.values()))})
    if unsplit:
        raise NotImplementedError(f"tensor parallelism on CPU splits LoRA layers (not DoRA) on split linears only; this model "
                                  f"also has {', '.join(unsplit[:3])}{' ...' if len(unsplit) > 3 else ''} (train it "
                                  "with data parallelism)")
    done = []
    for path, cell in cells.items():
        if not path or any(path.startswith(d + ".") for d in done):  # inside a layer already split
            continue
        style = module_style(config, path)
        leaf = path.rpartition(".")[2]
        if style in ("colwise", "rowwise") and isinstance(cell, LoraLinear):
            _replace(model, path, ParallelLoraLinear(cell, style, group, rank, size,
                                                     _FUSED_PARTS.get(leaf, 1) if style == "colwise" else 1))
        elif style == "colwise" and isinstance(cell, (Linear, Conv1D)):
            _replace(model, path, ColumnParallelLinear(cell, group, rank, size, _FUSED_PARTS.get(leaf, 1)))
        elif style == "rowwise" and isinstance(cell, (Linear, Conv1D)):
            _replace(model, path, RowParallelLinear(cell, group, rank, size))
        elif style == "vocab" and isinstance(cell, Embedding) and not vocab_emb_dp:
            _replace(model, path, VocabParallelEmbedding(cell, group, rank, size))
        elif style == "head" and isinstance(cell, Linear) and not vocab_emb_dp:
            _replace(model, path, VocabParallelHead(cell, group, rank, size))
        elif style == "experts" and isinstance(cell, Experts):
            _replace(model, path, TensorParallelExperts(cell, group, rank, size))
        else:
            continue
        done.append(path)
    for path, cell in cells.items():
        if isinstance(cell, Attention) and any(d.startswith(path + ".") for d in done):
            cell.num_heads //= size
            cell.num_kv_heads //= size
            for norm in ("q_norm", "k_norm"):
                if getattr(cell, norm) is not None:
                    setattr(cell, norm, NormInsideSplit(getattr(cell, norm), group))
        if hasattr(cell, "num_heads") and hasattr(cell, "c_attn") and any(d.startswith(path + ".") for d in done):
            cell.num_heads //= size  # GPT-2's attention
    from ..tuners.tuner_layer import rename_parameters

    rename_parameters(model)
    return done


def split_layout(model: nn.Cell) -> Dict[str, Tuple[str, int, int]]:
    """Parameter path -> (style, split dim, fused parts) of every split parameter of ``model``."""
    out = {}
    for path, cell in model.cells_and_names():
        layout = getattr(cell, "tp_layout", None)
        if layout is None:
            continue
        if isinstance(layout, dict):
            for leaf, value in layout.items():
                out[f"{path}.{leaf}"] = value
        else:
            out[f"{path}.weight"] = layout
            if getattr(cell, "bias", None) is not None and layout[0] == "colwise":
                out[f"{path}.bias"] = (layout[0], 0, layout[2])
    return out


def gather_state(model: nn.Cell, group: str, rank: int, size: int) -> Dict[str, np.ndarray]:
    """Whole tensors of every parameter, on every rank of the tensor-parallel ``group`` (each rank puts its
    slices in place in zeros and the group sums them: ``AllGather`` runs only on the world group on CPU)."""
    layout = split_layout(model)
    all_reduce = ops.AllReduce(group=group)
    state = {}
    for name, param in model.parameters_and_names():
        value = param.asnumpy()
        if name in layout:
            _, dim, parts = layout[name]
            pieces = [value if r == rank else np.zeros_like(value) for r in range(size)]
            value = all_reduce(Tensor(_unslice(pieces, dim, parts))).asnumpy()
        state[name] = value
    return state


def tensor_parallel_groups(world_size: int, model_parallel: int) -> Tuple[int, int, str, str]:
    """Create this process's tensor-parallel and data-parallel communication groups (consecutive ranks form
    a tensor-parallel group, as Megatron places them). Returns (tp rank, dp rank, tp group, dp group)."""
    from mindspore.communication import create_group, get_rank

    rank = get_rank()
    data_parallel = world_size // model_parallel
    tp_groups = [list(range(d * model_parallel, (d + 1) * model_parallel)) for d in range(data_parallel)]
    dp_groups = [list(range(m, world_size, model_parallel)) for m in range(model_parallel)]
    tp_ranks = next(r for r in tp_groups if rank in r)
    dp_ranks = next(r for r in dp_groups if rank in r)
    tp_group, dp_group = f"tp_{tp_ranks[0]}", f"dp_{dp_ranks[0]}"
    if model_parallel > 1:  # every process creates the groups it belongs to
        create_group(tp_group, tp_ranks)
    if data_parallel > 1:
        create_group(dp_group, dp_ranks)
    return rank % model_parallel, rank // model_parallel, tp_group, dp_group


class TensorParallelRun:
    """A process's place in a tensor-parallel run under msrun: its groups and how its tensors are split.

    Attributes:
        tp_rank, tp_size, tp_group: this rank in its tensor-parallel group (consecutive ranks).
        dp_rank, dp_size, dp_group: this rank's data-parallel replica (each reads its own data shard).
        layout: split parameter path -> (style, dim, fused parts), known once the model is split.
    """

    # optimizer state tensors are named "<prefix>.<parameter path>" (trainer/optim.py)
    STATE_PREFIXES = ("exp_avg.", "exp_avg_sq.")

    def __init__(self, world_size: int, model_parallel: int, vocab_emb_dp: bool = True):
        if world_size % model_parallel:
            raise ValueError(f"model_parallel ({model_parallel}) must divide the number of processes ({world_size})")
        self.tp_size, self.dp_size = model_parallel, world_size // model_parallel
        self.tp_rank, self.dp_rank, self.tp_group, self.dp_group = tensor_parallel_groups(world_size, model_parallel)
        self.layout: Dict[str, Tuple[str, int, int]] = {}
        self.model = None  # the model split
        self.vocab_emb_dp = vocab_emb_dp  # False: embedding and head split by vocabulary

    def split(self, model: nn.Cell) -> List[str]:
        """Split ``model`` in place (see :func:`apply_tensor_parallel`) and remember the layout."""
        done = apply_tensor_parallel(model, self.vocab_emb_dp, self.tp_group, self.tp_rank,
                                     self.tp_size)
        self.layout = split_layout(model)
        self.model = model
        return done

    def _layout_of(self, name: str):
        for prefix in self.STATE_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
        return self.layout.get(name)

    def slice(self, state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """This rank's slices of whole tensors (weights or optimizer state) read from a checkpoint."""
        out = {}
        for name, value in state.items():
            layout = self._layout_of(name)
            out[name] = value if layout is None else _slice(np.asarray(value), layout[1], self.tp_rank, self.tp_size,
                                                            layout[2])
        return out

    def gather(self, tensors: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Whole tensors from every rank's slices (a collective: every rank of the group must call it)."""
        all_reduce = ops.AllReduce(group=self.tp_group)
        out = {}
        for name, value in tensors.items():
            layout = self._layout_of(name)
            if layout is not None:
                pieces = [value if r == self.tp_rank else np.zeros_like(value) for r in range(self.tp_size)]
                value = all_reduce(Tensor(_unslice(pieces, layout[1], layout[2]))).asnumpy()
            out[name] = value
        return out

    def sharded_mask(self, parameters) -> Tuple[bool, ...]:
        """For each of ``parameters`` (in order), whether it is split (its gradient norm sums over the group)."""
        return tuple(p.name in self.layout for p in parameters)
