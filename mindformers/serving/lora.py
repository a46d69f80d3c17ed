"""Many LoRA adapters in one batch: a preallocated adapter pool and a segment-grouped low-rank kernel.

Every targeted linear layer becomes a :class:`MultiLoraLinear`: ``y = W x + b + delta(x)``. The base matmul
runs once for the whole batch; ``delta`` adds each row's own adapter (Punica / S-LoRA's segmented
gather matrix-vector product, SGMV):

    for each adapter s in the batch, rows R_s:   delta[R_s] = (x[R_s] @ A_s[:r_s]^T) @ (scaling_s * B_s[:, :r_s])^T

The pool holds, per targeted layer, ``A [lora_max_num, lora_max_rank, in]``, ``scaling * B^T
[lora_max_num, lora_max_rank, out]`` (in the order its kernel reads, ``Kernel.pack``) and each slot's rank,
allocated once from the runtime limits as
MindSpore Parameters of the served model. Loading an adapter is reading its files (``prepare``, any
thread) then writing its factors into a slot (``install``: no recompilation, no new graph); unloading sets
the slot's ranks to 0. Which adapters are resident, and which one a full pool evicts, is the engine's
choice (``engine.py``). Which slot each row uses is one more Parameter, ``row_slots``, which the engine
sets before each step (:meth:`AdapterPool.bind_rows`), so the model's forward signature stays the one
``generate`` uses.

The product itself is a compiled kernel inside the step, one implementation per platform
(``lora_kernels.py``): the C++ host kernel on CPU (each adapter at its own rank, base rows free), MindSpore
ops (gather + batched matmul) elsewhere. On CPU a decode step's few float32 rows of a ``Linear`` take the
base product and the adapters' in one kernel (``host.linear_lora``: one launch per layer; one thread streams
the adapters' factors while the other computes the base product).

DoRA and IA3 (``scaled_adapters``): a scaled pool also holds, per layer, row scales indexed by slot + 1 (row
0, the identity, serves base rows): ``out [max_num + 1, out]``, ``in [max_num + 1, in]`` and, on layers with a
bias, ``shift [max_num + 1, out]``. Gathered per row by ``row_slots + 1`` around the same kernels::

    y = g * (W (l * x) + b + delta(x)) + c

- LoRA (and base rows): g = 1, l = 1, c = 0 (the unscaled pool's numbers, bit for bit);
- DoRA (Liu et al. 2024; PEFT's ``lora_magnitude_vector``): g = m / ||W + s B A|| per output row, computed
  once at load time on the host in float64 (``AdapterPool.dora_scales``), and c = (1 - g) * b, so the bias
  stays unscaled: y = g * (W x + s B A x) + b;
- IA3 (PEFT's ``ia3_l``; no factors, ranks 0): g = l on its other targets (the bias is scaled with the
  output, as PEFT does), l on the input of its ``feedforward_modules``.

The adapter-free graphs (``apply(False)``) stay the plain base model.
"""
import os
import re
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from ..checkpoint.safetensors_dir import _read_file
from ..kernels import host
from ..models.common.layers import Conv1D, Linear, cast, few_rows_on_host
from ..tuners.config import CONFIG_NAME, WEIGHTS_NAME
from ..tuners.lora.model import replace_module, resolve_targets
from ..utils import EXECUTION_LOCK
from . import lora_kernels
from .status import ServingError, StatusCode

_SLOT_NAMES = "lora_A|lora_B|lora_magnitude_vector|ia3_l"
# PEFT ends factors with ``.weight`` and vectors at the slot (``<module>.ia3_l``); SWIFT keeps the adapter name
_PEFT_KEY = re.compile(rf"^base_model\.model\.(?P<module>.+)\.(?P<slot>{_SLOT_NAMES})(?:\.weight)?$")
_SWIFT_KEY = re.compile(rf"^(?P<module>.+)\.(?P<slot>{_SLOT_NAMES})\.(?P<name>[^.]+)\.weight$")
# what each kind of adapter holds per module (DoRA: LoRA with use_dora)
_KIND_SLOTS = {"LORA": {"lora_A", "lora_B"}, "DORA": {"lora_A", "lora_B", "lora_magnitude_vector"}, "IA3": {"ia3_l"}}


def _invalid(message: str) -> ServingError:
    return ServingError(StatusCode.INVALID_REQUEST, message)


def _zeros(shape, dtype=np.float32) -> Parameter:
    return Parameter(Tensor(np.zeros(shape, dtype)), requires_grad=False)


def _ones(shape) -> Parameter:
    return Parameter(Tensor(np.ones(shape, np.float32)), requires_grad=False)


@dataclass
class PreparedAdapter:
    """An adapter read from its files, laid out as one pool slot (what :meth:`AdapterPool.install` writes)."""

    path: str
    """The adapter directory (absolute)."""
    tensors: Dict[str, Tuple[np.ndarray, np.ndarray]]
    """Module path -> (A [max_rank, in], scaling * B^T [max_rank, out] in the pool kernel's order, its
    ``pack``), zero past the adapter's rank."""
    ranks: Dict[str, int]
    """Module path -> rank; layers the adapter leaves alone are absent (rank 0 in the slot)."""
    rank: int
    """The highest rank (0 for IA3)."""
    weight_bytes: int
    """Bytes of the adapter's tensors at their own ranks (a slot holds ``slot_bytes``)."""
    read_seconds: float
    """Time :meth:`AdapterPool.prepare` took."""
    kind: str = "LORA"
    """``LORA``, ``DORA`` or ``IA3``."""
    scales: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)
    """Row scales of a scaled pool (DoRA, IA3): ``out`` module -> [out] (DoRA's m / ||W + s B A||, IA3's
    output vector), ``in`` module -> [in] (IA3 on a feed-forward layer), ``shift`` module -> [out] (DoRA on a
    layer with a bias: (1 - g) b). Absent modules keep the identity."""

    @property
    def modules(self) -> int:
        """How many layers the adapter changes."""
        return len(set(self.ranks).union(*self.scales.values()))


@dataclass
class AdapterFiles:
    """An adapter directory's tensors, checked against the served layers (:func:`read_adapter_dir`)."""

    kind: str
    """``LORA``, ``DORA`` (LoRA with use_dora) or ``IA3``."""
    factors: Dict[str, Tuple[np.ndarray, np.ndarray]]
    """LoRA and DoRA: module -> (A [r, in], B [out, r])."""
    scaling: Dict[str, float]
    """LoRA and DoRA: module -> alpha / r (or rsLoRA's alpha / sqrt(r))."""
    magnitudes: Dict[str, np.ndarray]
    """DoRA: module -> m [out]."""
    vectors: Dict[str, Tuple[np.ndarray, bool]]
    """IA3: module -> (l flattened, scales the input (a feed-forward module) rather than the output)."""

    @property
    def rank(self) -> int:
        return max((a.shape[0] for a, _ in self.factors.values()), default=0)

    @property
    def nbytes(self) -> int:
        arrays = [x for pair in self.factors.values() for x in pair] + list(self.magnitudes.values())
        return int(sum(x.nbytes for x in arrays) + sum(v.nbytes for v, _ in self.vectors.values()))


class AdapterPool:
    """Adapter factors of every targeted layer, ``lora_max_num`` slots of up to ``lora_max_rank``.

    Args:
        layers: module path -> (in_features, out_features) of the layers adapters may target.
        max_num, max_rank: the limits.
        max_rows: the most rows a step runs (the engine's max_batch).
        kernel: ``auto``, ``host`` or ``gather`` (see ``lora_kernels.py``).
        scaled: also hold per-slot row scales, so DoRA and IA3 adapters are served (``scaled_adapters``).
        dtype: ``float32`` or ``float16``, the factors' type in the pool (``lora_dtype``); the product is
            float32 either way.
    """

    def __init__(self, layers: Dict[str, Tuple[int, int]], max_num: int, max_rank: int, max_rows: int,
                 kernel: str = "auto", scaled: bool = False, dtype: str = "float32"):
        self.layers = dict(layers)
        self.max_num, self.max_rank, self.max_rows = max_num, max_rank, max_rows
        self.kernel = lora_kernels.choose(kernel)
        self.scaled = scaled
        self.dtype = np.dtype(dtype)
        self.a = {p: _zeros((max_num, max_rank, i), self.dtype) for p, (i, o) in layers.items()}
        self.bt = {p: _zeros((max_num, max_rank, o), self.dtype) for p, (i, o) in layers.items()}
        self.ranks = {p: _zeros(max_num, np.int32) for p in layers}  # 0: the adapter leaves that layer alone
        # row scales, indexed by slot + 1 (row 0: base rows): y = out * base(in * x) + delta(x) * out + shift
        self.out_scale = {p: _ones((max_num + 1, o)) for p, (i, o) in layers.items()} if scaled else {}
        self.in_scale = {p: _ones((max_num + 1, i)) for p, (i, o) in layers.items()} if scaled else {}
        self.shift: Dict[str, Parameter] = {}  # layers with a bias ([max_num + 1, out]), added by add_layer
        self.bases: Dict[str, nn.Cell] = {}  # path -> the base Linear/Conv1D (DoRA's norms read its weight)
        self.row_slots = Parameter(Tensor(np.full(max_rows, -1, np.int32)), requires_grad=False)
        self.slots: Dict[str, int] = {}  # resident adapter name -> slot
        self.scaled_paths: Dict[int, Set[str]] = {}  # slot -> layers whose scales differ from the identity
        self.cells: List["MultiLoraLinear"] = []  # the layers carrying the pool (attach_pool fills it)

    def add_layer(self, path: str, base: nn.Cell) -> None:
        """Note the base layer of ``path`` (a :class:`MultiLoraLinear` wrapping it calls this)."""
        self.bases[path] = base
        if self.scaled and base.bias is not None:
            self.shift[path] = _zeros((self.max_num + 1, self.layers[path][1]))

    def apply(self, on: bool) -> None:
        """Whether steps compiled from now on add the adapters' product (``MultiLoraLinear.apply``). A graph
        keeps what it was compiled with, so a step compiled with ``apply(False)`` is the base model alone:
        the engine keeps one such step for batches without adapter rows and calls each step under its own
        setting."""
        for cell in self.cells:
            cell.apply = on

    @property
    def slot_bytes(self) -> int:
        """Bytes one slot takes across all layers."""
        size = sum(self.dtype.itemsize * self.max_rank * (i + o) for i, o in self.layers.values())
        if self.scaled:
            size += sum(4 * (i + o) for i, o in self.layers.values()) + sum(4 * self.layers[p][1] for p in self.shift)
        return size

    def bind_rows(self, row_slots: Sequence[int]) -> None:
        """Set the slot of each row of the next step (-1: base model). Rows of one adapter should be
        contiguous (one segment of the batch; the host kernel reads its factors once per segment), scattered
        rows work too. An eager write: the caller holds ``EXECUTION_LOCK``."""
        if len(row_slots) > self.max_rows:
            raise ValueError(f"{len(row_slots)} rows, but the pool was sized for {self.max_rows} (max_batch)")
        slots = np.full(self.max_rows, -1, np.int32)
        slots[:len(row_slots)] = row_slots
        ops.assign(self.row_slots, Tensor(slots))

    def _write(self, slot: int, tensors: Dict[str, Tuple[np.ndarray, np.ndarray]], ranks: Dict[str, int],
               scales: Optional[Dict[str, Dict[str, np.ndarray]]] = None) -> None:
        """Write one slot of every layer (absent layers: rank 0, identity scales), in place in the Parameters
        the compiled steps read. Scale rows are written where they change: the new adapter's layers and
        those the slot's previous adapter scaled (set back to ones), so LoRA loads cost no scale writes."""
        index = Tensor(np.array([slot], np.int32))
        scales = scales or {}
        with EXECUTION_LOCK:
            for path in self.layers:
                if path in tensors:
                    a, bt = tensors[path]
                    ops.scatter_update(self.a[path], index, Tensor(a[None]))
                    ops.scatter_update(self.bt[path], index, Tensor(bt[None]))
                ops.scatter_update(self.ranks[path], index, Tensor(np.array([ranks.get(path, 0)], np.int32)))
            if not self.scaled:
                return
            row = Tensor(np.array([slot + 1], np.int32))
            scaled = set().union(*scales.values())
            tables = (("out", self.out_scale, 1.0), ("in", self.in_scale, 1.0), ("shift", self.shift, 0.0))
            for path in scaled | self.scaled_paths.get(slot, set()):
                for key, table, identity in tables:
                    if path in table:
                        value = scales.get(key, {}).get(path)
                        if value is None:
                            value = np.full(table[path].shape[1], identity, np.float32)
                        ops.scatter_update(table[path], row, Tensor(value.astype(np.float32)[None]))
            self.scaled_paths[slot] = scaled

    # ------------------------------------------------------------------ loading
    def prepare(self, directory: str) -> PreparedAdapter:
        """Read the PEFT or SWIFT adapter in ``directory`` and lay it out as one slot (host memory).

        The slow part of a load (disk, checks, numpy conversion; DoRA's row norms); it touches no pool
        state, so any thread may run it while steps run. Raises ServingError (INVALID_REQUEST) when the
        files do not fit.
        """
        start = time.perf_counter()
        files = read_adapter_dir(directory, self.layers, self.max_rank, self.scaled)
        tensors, ranks = {}, {}
        for path, (a, b) in files.factors.items():
            r = a.shape[0]
            fan_in, fan_out = self.layers[path]
            a_slot = np.zeros((self.max_rank, fan_in), self.dtype)
            bt_slot = np.zeros((self.max_rank, fan_out), self.dtype)
            with np.errstate(over="ignore"):
                a_slot[:r] = a
                bt_slot[:r] = (files.scaling[path] * b.astype(np.float64)).T
            if self.dtype != np.float32 and not (np.isfinite(a_slot).all() and np.isfinite(bt_slot).all()):
                raise _invalid(f"{directory}: the factors of {path} do not fit the pool's {self.dtype.name} "
                               f"(largest |A| {np.abs(a).max():.4g}, |scaling * B| "
                               f"{np.abs(files.scaling[path] * b.astype(np.float64)).max():.4g}; float16 holds "
                               "up to 65504); serve it with lora_dtype float32")
            tensors[path], ranks[path] = (a_slot, lora_kernels.KERNELS[self.kernel].pack(bt_slot, r)), r
        scales: Dict[str, Dict[str, np.ndarray]] = {"out": {}, "in": {}, "shift": {}}
        for path, magnitude in files.magnitudes.items():
            a, b = files.factors[path]
            scales["out"][path], shift = self.dora_scales(path, a, b, files.scaling[path], magnitude)
            if shift is not None:
                scales["shift"][path] = shift
        for path, (vector, feedforward) in files.vectors.items():  # IA3: l * (W x + b), or W (l * x) + b
            scales["in" if feedforward else "out"][path] = vector
        scales = {key: table for key, table in scales.items() if table}
        return PreparedAdapter(os.path.abspath(directory), tensors, ranks, files.rank, files.nbytes,
                               time.perf_counter() - start, files.kind, scales)

    def dora_scales(self, path: str, a: np.ndarray, b: np.ndarray, scaling: float,
                    magnitude: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """DoRA (Liu et al. 2024) on layer ``path`` as row scales around the LoRA kernel:
        ``y = g * (W x + s B A x) + b = g * (base(x) + delta(x)) + (1 - g) * b``.

        Args:
            a, b: the factors, A [r, in] and B [out, r]; scaling: s.
            magnitude: m [out].

        Returns:
            (g = m / ||W + s B A|| per output row [out], the shift (1 - g) * b [out] or None without a bias),
            float64. The norm is taken once here, at load time, as PEFT's (detached) norm is a constant.
        """
        weight, bias = self.base_weight(path)
        norm = np.linalg.norm(weight + scaling * (b.astype(np.float64) @ a.astype(np.float64)), axis=1)
        gain = magnitude.astype(np.float64) / norm
        return gain, None if bias is None else (1.0 - gain) * bias

    def base_weight(self, path: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """The base layer's weight as [out, in] and its bias (None without one), float64 host copies.

        Read at each DoRA load, not kept: a standing copy would double the host memory of the targeted
        weights. The read holds ``EXECUTION_LOCK`` (MindSpore calls take turns on it).
        """
        base = self.bases[path]
        with EXECUTION_LOCK:
            weight = base.weight.asnumpy().astype(np.float64)
            bias = None if base.bias is None else base.bias.asnumpy().astype(np.float64)
        return (weight.T if isinstance(base, Conv1D) else weight), bias  # Conv1D stores [in, out]

    def free_slots(self) -> List[int]:
        return sorted(set(range(self.max_num)) - set(self.slots.values()))

    def install(self, name: str, prepared: PreparedAdapter, slot: int) -> float:
        """Write ``prepared`` into ``slot`` (free, or just evicted) as adapter ``name``; returns the seconds
        the write took. The caller makes sure no row of a running step uses ``slot``."""
        if name in self.slots or slot in self.slots.values():
            raise ValueError(f"cannot install {name!r} in slot {slot}: slots in use {self.slots}")
        if prepared.scales and not self.scaled:
            raise ValueError(f"{name!r} is a {prepared.kind} adapter; the pool holds no row scales (scaled_adapters)")
        start = time.perf_counter()
        # every layer's rank and scales: the old adapter's are gone
        self._write(slot, prepared.tensors, prepared.ranks, prepared.scales)
        self.slots[name] = slot
        return time.perf_counter() - start

    def evict(self, name: str) -> int:
        """Forget which slot ``name`` holds and return it, for :meth:`install` to overwrite (rows must no
        longer use it)."""
        return self.slots.pop(name)

    def unload(self, name: str) -> None:
        """Evict ``name`` and reset its slot: ranks 0, scales the identity."""
        self._write(self.evict(name), {}, {})


def _read_config(directory: str, scaled: bool):
    """The adapter's config and kind (LORA, DORA, IA3), refusing what the engine does not serve."""
    from ..tuners.peft import config_from_dir

    if not os.path.isdir(directory):
        raise _invalid(f"adapter directory {directory!r} does not exist")
    if not os.path.isfile(os.path.join(directory, CONFIG_NAME)):
        subdirs = sorted(d for d in os.listdir(directory) if os.path.isfile(os.path.join(directory, d, CONFIG_NAME)))
        hint = f"; it holds adapter folders {subdirs}: give one of them" if subdirs else ""
        raise _invalid(f"{directory} has no {CONFIG_NAME}: expected a PEFT or SWIFT adapter directory{hint}")
    try:
        config = config_from_dir(directory)
    except (ValueError, TypeError) as err:
        raise _invalid(str(err)) from None
    if config.peft_type not in ("LORA", "IA3"):
        raise _invalid(f"{directory}: a {config.peft_type} adapter; the serving engine runs LoRA adapters (and "
                       f"DoRA and IA3 ones with scaled_adapters) only")
    kind = "DORA" if config.peft_type == "LORA" and config.use_dora else config.peft_type
    if kind != "LORA" and not scaled:
        what = "a DoRA adapter (LoRA with use_dora)" if kind == "DORA" else "an IA3 adapter"
        raise _invalid(f"{directory}: {what} needs per-row scales: install the model with scaled_adapters=True "
                       f"(RuntimeConfigBuilder.scaled_adapters, --scaled-adapters) to serve it")
    checks = [("modules_to_save", config.modules_to_save)]
    if config.peft_type == "LORA":
        checks += [("bias", config.bias != "none"),
                   ("target_parameters (MoE experts or routers)", config.target_parameters)]
    unsupported = [f for f, bad in checks if bad]
    if unsupported:
        raise _invalid(f"{directory}: {config.peft_type} with {', '.join(unsupported)} is not served (plain LoRA, "
                       f"rsLoRA, DoRA and IA3 are); merge the adapter into the model instead")
    return config, kind


def _read_tensors(directory: str, kind: str) -> Dict[str, Dict[str, np.ndarray]]:
    """module -> {slot name: tensor} of the adapter's weights file (PEFT or SWIFT keys)."""
    weights_path = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(weights_path):
        raise _invalid(f"no {WEIGHTS_NAME} in {directory} (found: {sorted(os.listdir(directory))})")
    try:
        tensors = _read_file(weights_path)
    except ValueError as err:
        raise _invalid(str(err)) from None
    swift = not any(key.startswith("base_model.model.") for key in tensors)  # SWIFT keys carry the adapter name
    pattern = _SWIFT_KEY if swift else _PEFT_KEY
    slots = _KIND_SLOTS[kind]
    found: Dict[str, Dict[str, np.ndarray]] = {}
    names = set()
    for key, value in tensors.items():
        match = pattern.match(key)
        if not match or match.group("slot") not in slots:
            example = "<module>.{}.<adapter>.weight" if swift else "base_model.model.<module>.{}"
            raise _invalid(f"{weights_path}: tensor {key!r} is not a {kind} tensor of a linear layer "
                           f"(expected {', '.join(example.format(s) for s in sorted(slots))})")
        if swift:
            names.add(match.group("name"))
        found.setdefault(match.group("module"), {})[match.group("slot")] = value
    if len(names) > 1:
        raise _invalid(f"{weights_path} holds several adapters {sorted(names)}; save them one per folder")
    if not found:
        raise _invalid(f"{weights_path} holds no {kind} tensors")
    return found


def read_adapter_dir(directory: str, layers: Dict[str, Tuple[int, int]], max_rank: int,
                     scaled: bool = False) -> AdapterFiles:
    """The tensors of a PEFT or SWIFT adapter directory (LoRA; DoRA and IA3 when ``scaled``), checked
    against the served layers and limits. Raises ServingError (INVALID_REQUEST) when they do not fit."""
    from ..tuners.targets import listed

    config, kind = _read_config(directory, scaled)
    found = _read_tensors(directory, kind)
    files, problems = AdapterFiles(kind, {}, {}, {}, {}), []
    for module, slots in sorted(found.items()):
        if module not in layers:
            problems.append(f"{module} is not a served layer")
            continue
        fan_in, fan_out = layers[module]
        missing = sorted(_KIND_SLOTS[kind] - set(slots))
        if missing:
            problems.append(f"{module} lacks {', '.join(missing)}")
            continue
        if kind == "IA3":
            feedforward = bool(config.feedforward_modules) and listed(config.feedforward_modules, module)
            vector, shape = slots["ia3_l"], (1, fan_in) if feedforward else (fan_out, 1)
            if tuple(vector.shape) != shape:
                problems.append(f"{module}: ia3_l {tuple(vector.shape)}, expected {shape} (a "
                                f"{'feed-forward' if feedforward else 'non-feed-forward'} module)")
                continue
            files.vectors[module] = (vector.reshape(-1).astype(np.float32), feedforward)
            continue
        a, b = slots["lora_A"], slots["lora_B"]
        r = a.shape[0]
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != fan_in or b.shape != (fan_out, r):
            problems.append(f"{module}: A {tuple(a.shape)} B {tuple(b.shape)}, expected A [r, {fan_in}] B [{fan_out}, r]")
            continue
        if r > max_rank:
            problems.append(f"{module} has rank {r} > lora_max_rank={max_rank}")
            continue
        if kind == "DORA":
            magnitude = slots["lora_magnitude_vector"]
            if magnitude.size != fan_out:
                problems.append(f"{module}: lora_magnitude_vector {tuple(magnitude.shape)}, expected [{fan_out}]")
                continue
            files.magnitudes[module] = magnitude.reshape(-1).astype(np.float32)
        _, alpha = config.rank_and_alpha(module)
        files.scaling[module] = config.scaling(r, alpha)
        files.factors[module] = (a.astype(np.float32), b.astype(np.float32))
    if problems:
        shown = "; ".join(problems[:4]) + (f"; ... ({len(problems)} in all)" if len(problems) > 4 else "")
        raise _invalid(f"{directory} does not fit the served model: {shown}. Served layers are named like "
                       f"{next(iter(layers), '(none)')} (set lora_target_modules to serve other layers; raise "
                       f"lora_max_rank for higher ranks)")
    return files


class MultiLoraLinear(nn.Cell):
    """A Linear or Conv1D layer plus the pool's adapters: ``y = base(x) + delta(x)`` (see the module doc),
    and on a scaled pool ``y = g * (base(l * x) + delta(x)) + c`` with each row's slot's scales (``g``,
    ``l``: ones and ``c`` zero for base and LoRA rows).

    Keeps the base layer as ``base`` so its Parameters keep their names under it; the pool's Parameters of
    this layer (and the shared ``row_slots``) are its own.
    """

    def __init__(self, base, pool: AdapterPool, path: str):
        super().__init__()
        self.base = base
        pool.add_layer(path, base)
        self.pool_a, self.pool_bt, self.pool_ranks = pool.a[path], pool.bt[path], pool.ranks[path]
        self.row_slots = pool.row_slots
        self.delta = lora_kernels.KERNELS[pool.kernel].delta
        # a decode step's few rows: the base product and the adapters' in one host kernel (linear_lora)
        self.fused = pool.kernel == "host" and type(base) is Linear and base.host_linear
        self.scaled, self.shifted = pool.scaled, path in pool.shift
        if self.scaled:
            self.out_scale, self.in_scale = pool.out_scale[path], pool.in_scale[path]  # [slots + 1, out / in]
        if self.shifted:
            self.shift = pool.shift[path]  # [slots + 1, out]
        self.apply = True  # False: the graph compiled now leaves the adapters out (AdapterPool.apply)
        pool.cells.append(self)

    def construct(self, x):
        if not self.apply:
            return self.base(x)
        h = cast(x, ms.float32)
        if not self.scaled:
            if self.fused and few_rows_on_host(x, self.base.weight, not self.training):
                return host.linear_lora(x, self.base.weight, self.pool_a, self.pool_bt, self.pool_ranks,
                                        self.row_slots, self.base.bias)
            return cast(self.add_delta(h, self.base(x)), x.dtype)
        rows = x.shape[0]
        index = self.row_slots[:rows] + 1  # row 0 of the scales: the identity, for base rows (slot -1)
        shape = (rows,) + (1,) * (len(x.shape) - 2) + (-1,)  # [rows, 1.., features]
        scaled_x = cast(h * ops.gather(self.in_scale, index, 0).reshape(shape), x.dtype)
        y = self.add_delta(h, self.base(scaled_x)) * ops.gather(self.out_scale, index, 0).reshape(shape)
        if self.shifted:
            y = y + ops.gather(self.shift, index, 0).reshape(shape)
        return cast(y, x.dtype)

    def add_delta(self, h, base_out):
        """``base_out + delta(h)`` in float32, by the pool's kernel."""
        y = cast(base_out, ms.float32)
        return self.delta(h, self.pool_a, self.pool_bt, self.pool_ranks, self.row_slots, y)


def attach_pool(model: nn.Cell, target_modules: Optional[List[str]], max_num: int, max_rank: int, max_rows: int,
                kernel: str = "auto", scaled: bool = False, dtype: str = "float32") -> AdapterPool:
    """Replace the layers adapters may target by :class:`MultiLoraLinear` sharing one new pool (with row
    scales when ``scaled``; factors in ``dtype``)."""
    from ..tuners.lora.config import LoraConfig
    from ..tuners.lora.model import is_target

    linear = {n: c for n, c in model.cells_and_names() if n and isinstance(c, (Linear, Conv1D))}
    targets = resolve_targets(LoraConfig(target_modules=target_modules or "all-linear"), model)
    chosen = {n: c for n, c in linear.items() if is_target(LoraConfig(target_modules=targets), n, targets)}
    if not chosen:
        raise _invalid(f"lora_target_modules {target_modules!r} match no linear layer; layers are named like "
                       f"{', '.join(list(linear)[:4])}")
    pool = AdapterPool({n: (c.in_features, c.out_features) for n, c in chosen.items()}, max_num, max_rank,
                       max_rows, kernel, scaled, dtype)
    for name, cell in chosen.items():
        replace_module(model, name, MultiLoraLinear(cell, pool, name))
    for path, param in model.parameters_and_names():  # keep the checkpoint names ("...q_proj.weight")
        param.name = path.replace(".base.", ".")
    return pool
