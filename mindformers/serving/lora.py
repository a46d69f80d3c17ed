"""Many LoRA adapters in one batch: a preallocated adapter pool and a segment-grouped low-rank kernel.

Every targeted linear layer becomes a :class:`MultiLoraLinear`: ``y = W x + b + delta(x)``. The base matmul
runs once for the whole batch; ``delta`` adds each row's own adapter (Punica / S-LoRA's segmented
gather matrix-vector product, SGMV):

    for each adapter s in the batch, rows R_s:   delta[R_s] = (x[R_s] @ A_s[:r_s]^T) @ (scaling_s * B_s[:, :r_s])^T

The pool holds, per targeted layer, ``A [lora_max_num, lora_max_rank, in]``, ``scaling * B^T
[lora_max_num, lora_max_rank, out]`` and each slot's rank, allocated once from the runtime limits as
MindSpore Parameters of the served model. Loading an adapter is reading its files (``prepare``, any
thread) then writing its factors into a slot (``install``: no recompilation, no new graph); unloading sets
the slot's ranks to 0. Which adapters are resident, and which one a full pool evicts, is the engine's
choice (``engine.py``). Which slot each row uses is one more Parameter, ``row_slots``, which the engine
sets before each step (:meth:`AdapterPool.bind_rows`), so the model's forward signature stays the one
``generate`` uses.

The product itself is a compiled kernel inside the step, one implementation per platform
(``lora_kernels.py``): the C++ host kernel on CPU (each adapter at its own rank, base rows free), MindSpore
ops (gather + batched matmul) elsewhere.
"""
import os
import re
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from ..checkpoint.safetensors_dir import _read_file
from ..models.common.layers import Conv1D, Linear, cast
from ..tuners.config import CONFIG_NAME, WEIGHTS_NAME
from ..tuners.lora.model import replace_module, resolve_targets
from ..utils import EXECUTION_LOCK
from . import lora_kernels
from .status import ServingError, StatusCode

_PEFT_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<factor>[AB])\.weight$")
_SWIFT_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<factor>[AB])\.(?P<name>[^.]+)\.weight$")


def _invalid(message: str) -> ServingError:
    return ServingError(StatusCode.INVALID_REQUEST, message)


def _zeros(shape, dtype=np.float32) -> Parameter:
    return Parameter(Tensor(np.zeros(shape, dtype)), requires_grad=False)


@dataclass
class PreparedAdapter:
    """An adapter read from its files, laid out as one pool slot (what :meth:`AdapterPool.install` writes)."""

    path: str
    """The adapter directory (absolute)."""
    tensors: Dict[str, Tuple[np.ndarray, np.ndarray]]
    """Module path -> (A [max_rank, in], scaling * B^T [max_rank, out]), zero past the adapter's rank."""
    ranks: Dict[str, int]
    """Module path -> rank; layers the adapter leaves alone are absent (rank 0 in the slot)."""
    rank: int
    """The highest rank."""
    weight_bytes: int
    """Bytes of the factors at their own ranks (a slot holds ``slot_bytes``)."""
    read_seconds: float
    """Time :meth:`AdapterPool.prepare` took."""


class AdapterPool:
    """Adapter factors of every targeted layer, ``lora_max_num`` slots of up to ``lora_max_rank``.

    Args:
        layers: module path -> (in_features, out_features) of the layers adapters may target.
        max_num, max_rank: the limits.
        max_rows: the most rows a step runs (the engine's max_batch).
        kernel: ``auto``, ``host`` or ``gather`` (see ``lora_kernels.py``).
    """

    def __init__(self, layers: Dict[str, Tuple[int, int]], max_num: int, max_rank: int, max_rows: int,
                 kernel: str = "auto"):
        self.layers = dict(layers)
        self.max_num, self.max_rank, self.max_rows = max_num, max_rank, max_rows
        self.kernel = lora_kernels.choose(kernel)
        self.a = {p: _zeros((max_num, max_rank, i)) for p, (i, o) in layers.items()}
        self.bt = {p: _zeros((max_num, max_rank, o)) for p, (i, o) in layers.items()}
        self.ranks = {p: _zeros(max_num, np.int32) for p in layers}  # 0: the adapter leaves that layer alone
        self.row_slots = Parameter(Tensor(np.full(max_rows, -1, np.int32)), requires_grad=False)
        self.slots: Dict[str, int] = {}  # resident adapter name -> slot
        self.cells: List["MultiLoraLinear"] = []  # the layers carrying the pool (attach_pool fills it)

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
        return sum(4 * self.max_rank * (i + o) for i, o in self.layers.values())

    def bind_rows(self, row_slots: Sequence[int]) -> None:
        """Set the slot of each row of the next step (-1: base model). Rows of one adapter should be
        contiguous (one segment of the batch; the host kernel reads its factors once per segment), scattered
        rows work too. An eager write: the caller holds ``EXECUTION_LOCK``."""
        if len(row_slots) > self.max_rows:
            raise ValueError(f"{len(row_slots)} rows, but the pool was sized for {self.max_rows} (max_batch)")
        slots = np.full(self.max_rows, -1, np.int32)
        slots[:len(row_slots)] = row_slots
        ops.assign(self.row_slots, Tensor(slots))

    def _write(self, slot: int, tensors: Dict[str, Tuple[np.ndarray, np.ndarray]], ranks: Dict[str, int]) -> None:
        """Write one slot of every layer (absent layers: rank 0), in place in the Parameters the compiled
        steps read."""
        index = Tensor(np.array([slot], np.int32))
        with EXECUTION_LOCK:
            for path in self.layers:
                if path in tensors:
                    a, bt = tensors[path]
                    ops.scatter_update(self.a[path], index, Tensor(a[None]))
                    ops.scatter_update(self.bt[path], index, Tensor(bt[None]))
                ops.scatter_update(self.ranks[path], index, Tensor(np.array([ranks.get(path, 0)], np.int32)))

    # ------------------------------------------------------------------ loading
    def prepare(self, directory: str) -> PreparedAdapter:
        """Read the PEFT or SWIFT adapter in ``directory`` and lay its factors out as one slot (host memory).

        The slow part of a load (disk, checks, numpy conversion); it touches no pool state, so any thread
        may run it while steps run. Raises ServingError (INVALID_REQUEST) when the files do not fit.
        """
        start = time.perf_counter()
        factors, scaling, rank = read_lora_dir(directory, self.layers, self.max_rank)
        tensors, ranks = {}, {}
        for path, (a, b) in factors.items():
            r = a.shape[0]
            fan_in, fan_out = self.layers[path]
            a_slot, bt_slot = np.zeros((self.max_rank, fan_in), np.float32), np.zeros((self.max_rank, fan_out), np.float32)
            a_slot[:r] = a
            bt_slot[:r] = (scaling[path] * b.astype(np.float64)).T
            tensors[path], ranks[path] = (a_slot, bt_slot), r
        size = sum(a.nbytes + b.nbytes for a, b in factors.values())
        return PreparedAdapter(os.path.abspath(directory), tensors, ranks, rank, int(size),
                               time.perf_counter() - start)

    def free_slots(self) -> List[int]:
        return sorted(set(range(self.max_num)) - set(self.slots.values()))

    def install(self, name: str, prepared: PreparedAdapter, slot: int) -> float:
        """Write ``prepared`` into ``slot`` (free, or just evicted) as adapter ``name``; returns the seconds
        the write took. The caller makes sure no row of a running step uses ``slot``."""
        if name in self.slots or slot in self.slots.values():
            raise ValueError(f"cannot install {name!r} in slot {slot}: slots in use {self.slots}")
        start = time.perf_counter()
        self._write(slot, prepared.tensors, prepared.ranks)  # every layer's rank: the old adapter's are gone
        self.slots[name] = slot
        return time.perf_counter() - start

    def evict(self, name: str) -> int:
        """Forget which slot ``name`` holds and return it, for :meth:`install` to overwrite (rows must no
        longer use it)."""
        return self.slots.pop(name)

    def unload(self, name: str) -> None:
        """Evict ``name`` and set its slot's ranks to 0."""
        self._write(self.evict(name), {}, {})


def read_lora_dir(directory: str, layers: Dict[str, Tuple[int, int]], max_rank: int):
    """LoRA factors of a PEFT or SWIFT adapter directory, checked against the served layers and limits.

    Returns:
        ({module: (A [r, in], B [out, r])}, {module: scaling}, highest rank)
    """
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
    if config.peft_type != "LORA":
        raise _invalid(f"{directory}: a {config.peft_type} adapter; the serving engine runs LoRA adapters only")
    unsupported = [f for f, bad in (("use_dora", config.use_dora), ("modules_to_save", config.modules_to_save),
                                    ("bias", config.bias != "none"),
                                    ("target_parameters (MoE experts or routers)", config.target_parameters)) if bad]
    if unsupported:
        raise _invalid(f"{directory}: LoRA with {', '.join(unsupported)} is not served (plain LoRA and rsLoRA are); "
                       f"merge the adapter into the model instead")
    weights_path = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(weights_path):
        raise _invalid(f"no {WEIGHTS_NAME} in {directory} (found: {sorted(os.listdir(directory))})")
    try:
        tensors = _read_file(weights_path)
    except ValueError as err:
        raise _invalid(str(err)) from None
    swift = not any(key.startswith("base_model.model.") for key in tensors)  # SWIFT keys carry the adapter name
    pattern = _SWIFT_KEY if swift else _PEFT_KEY
    factors: Dict[str, Dict[str, np.ndarray]] = {}
    names = set()
    for key, value in tensors.items():
        match = pattern.match(key)
        if not match:
            raise _invalid(f"{weights_path}: tensor {key!r} is not a LoRA factor of a linear layer "
                           f"(expected {'<module>.lora_A.<adapter>.weight' if swift else 'base_model.model.<module>.lora_A.weight'})")
        if swift:
            names.add(match.group("name"))
        factors.setdefault(match.group("module"), {})[match.group("factor")] = value
    if len(names) > 1:
        raise _invalid(f"{weights_path} holds several adapters {sorted(names)}; save them one per folder")
    if not factors:
        raise _invalid(f"{weights_path} holds no LoRA factors")
    out, scaling, problems = {}, {}, []
    for module, pair in sorted(factors.items()):
        if module not in layers:
            problems.append(f"{module} is not a served layer")
            continue
        if set(pair) != {"A", "B"}:
            problems.append(f"{module} lacks lora_{'A' if 'A' not in pair else 'B'}")
            continue
        a, b = pair["A"], pair["B"]
        fan_in, fan_out = layers[module]
        r = a.shape[0]
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != fan_in or b.shape != (fan_out, r):
            problems.append(f"{module}: A {tuple(a.shape)} B {tuple(b.shape)}, expected A [r, {fan_in}] B [{fan_out}, r]")
            continue
        if r > max_rank:
            problems.append(f"{module} has rank {r} > lora_max_rank={max_rank}")
            continue
        _, alpha = config.rank_and_alpha(module)
        scaling[module] = config.scaling(r, alpha)
        out[module] = (a.astype(np.float32), b.astype(np.float32))
    if problems:
        shown = "; ".join(problems[:4]) + (f"; ... ({len(problems)} in all)" if len(problems) > 4 else "")
        raise _invalid(f"{directory} does not fit the served model: {shown}. Served layers are named like "
                       f"{next(iter(layers), '(none)')} (set lora_target_modules to serve other layers; raise "
                       f"lora_max_rank for higher ranks)")
    return out, scaling, max(a.shape[0] for a, _ in out.values())


class MultiLoraLinear(nn.Cell):
    """A Linear or Conv1D layer plus the pool's adapters: ``y = base(x) + delta(x)`` (see the module doc).

    Keeps the base layer as ``base`` so its Parameters keep their names under it; the pool's Parameters of
    this layer (and the shared ``row_slots``) are its own.
    """

    def __init__(self, base, pool: AdapterPool, path: str):
        super().__init__()
        self.base = base
        self.pool_a, self.pool_bt, self.pool_ranks = pool.a[path], pool.bt[path], pool.ranks[path]
        self.row_slots = pool.row_slots
        self.host = pool.kernel == "host"
        self.apply = True  # False: the graph compiled now leaves the adapters out (AdapterPool.apply)
        pool.cells.append(self)

    def construct(self, x):
        if not self.apply:
            return self.base(x)
        h, y = cast(x, ms.float32), cast(self.base(x), ms.float32)
        if self.host:
            y = lora_kernels.host_delta(h, self.pool_a, self.pool_bt, self.pool_ranks, self.row_slots, y)
        else:
            y = lora_kernels.gather_delta(h, self.pool_a, self.pool_bt, self.pool_ranks, self.row_slots, y)
        return cast(y, x.dtype)


def attach_pool(model: nn.Cell, target_modules: Optional[List[str]], max_num: int, max_rank: int, max_rows: int,
                kernel: str = "auto") -> AdapterPool:
    """Replace the layers adapters may target by :class:`MultiLoraLinear` sharing one new pool."""
    from ..tuners.lora.config import LoraConfig
    from ..tuners.lora.model import is_target

    linear = {n: c for n, c in model.cells_and_names() if n and isinstance(c, (Linear, Conv1D))}
    targets = resolve_targets(LoraConfig(target_modules=target_modules or "all-linear"), model)
    chosen = {n: c for n, c in linear.items() if is_target(LoraConfig(target_modules=targets), n, targets)}
    if not chosen:
        raise _invalid(f"lora_target_modules {target_modules!r} match no linear layer; layers are named like "
                       f"{', '.join(list(linear)[:4])}")
    pool = AdapterPool({n: (c.in_features, c.out_features) for n, c in chosen.items()}, max_num, max_rank,
                       max_rows, kernel)
    for name, cell in chosen.items():
        replace_module(model, name, MultiLoraLinear(cell, pool, name))
    for path, param in model.parameters_and_names():  # keep the checkpoint names ("...q_proj.weight")
        param.name = path.replace(".base.", ".")
    return pool
