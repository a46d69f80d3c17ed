"""The multi-LoRA product behind one interface, one implementation per platform (as vLLM's punica wrappers).

Every kernel computes, for ``x [rows, ..., in]`` and the adapter pool of one layer::

    out[row] = (x[row] @ a[s, :k]^T) @ bt[s, :k]      s = row_slots[row], k = ranks[s]
    out[row] = 0                                       where s < 0 (a base row) or k = 0

with ``a [slots, max_rank, in]``, ``bt [slots, max_rank, out]`` (``scaling * B^T``, its elements in the order
the kernel's ``pack`` puts them; both float32 or both float16, the pool's ``lora_dtype``, widened to float32 as
they are read), ``ranks [slots]`` int32 and ``row_slots [>= rows]`` int32 (entries past ``rows`` are
ignored). All are graph inputs (the pool's Parameters), so one compiled step serves any mix of adapters; the
output is float32. Given ``base`` (the layer's own output, float32), a kernel returns ``base + out`` (the host
kernel adds it as it writes).

- ``host``: the C++ kernel of ``mindformers/kernels`` (CPU). The rows of one adapter (adjacent or not) go in
  blocks of 4 tokens whose factors are read once; each adapter runs at its own rank; base rows cost nothing.
  Its bt is in column blocks at each slot's rank (``host.pack_columns``): a slot's factors are one run in memory.
- ``gather``: MindSpore ops for GPU/Ascend (and any CPU without a compiler): each row's factors gathered
  from the pool, then two batched matmuls at ``max_rank`` (rank masking zeroes what lies beyond an adapter's
  rank). It costs the same for base and adapter rows; tested on CPU against the host kernel and numpy.
"""
from typing import Any, Callable, Dict, NamedTuple

import mindspore as ms
import numpy as np
from mindspore import ops

from ..kernels import host
from ..models.common.layers import arange, cast


def host_delta(x, a, bt, ranks, row_slots, base=None):
    return host.lora_delta(x, a, bt, ranks, row_slots, base)


def gather_delta(x, a, bt, ranks, row_slots, base=None):
    rows, fan_in = x.shape[0], x.shape[-1]
    slots = row_slots[:rows]
    index = ops.maximum(slots, 0)
    rank = ops.gather(ranks, index, 0) * (slots >= 0).astype(ms.int32)  # [rows]; 0 for base rows
    keep = (arange(0, a.shape[1]).reshape(1, 1, -1) < rank.reshape(-1, 1, 1)).astype(ms.float32)
    a_rows, bt_rows = cast(ops.gather(a, index, 0), ms.float32), cast(ops.gather(bt, index, 0), ms.float32)
    hidden = ops.bmm(x.reshape(rows, -1, fan_in), a_rows.swapaxes(1, 2)) * keep
    out = ops.bmm(hidden, bt_rows).reshape(x.shape[:-1] + (bt.shape[-1],))
    return out if base is None else base + out


class Kernel(NamedTuple):
    delta: Callable  # (x, a, bt, ranks, row_slots, base=None) -> base + out, as above
    pack: Callable[[np.ndarray, Any], np.ndarray]  # (bt [..., max_rank, out], ranks) -> the order delta reads


KERNELS: Dict[str, Kernel] = {"host": Kernel(host_delta, host.pack_columns),
                              "gather": Kernel(gather_delta, lambda bt, ranks: bt)}


def choose(name: str = "auto") -> str:
    """The kernel for ``name``: ``auto`` is ``host`` where the host kernels run (CPU with the library built),
    else ``gather``."""
    if name == "auto":
        return "host" if host.enabled() else "gather"
    if name not in KERNELS:
        raise ValueError(f"lora_kernel must be 'auto' or one of {sorted(KERNELS)}, found {name!r}")
    if name == "host" and not host.enabled():
        raise ValueError("lora_kernel='host' needs the host kernels (a CPU device and a C++ compiler; "
                         f"{host.ENV_SWITCH} not 0); use 'gather' or 'auto'")
    return name
