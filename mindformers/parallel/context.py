"""Setting MindSpore up for a run: device, execution mode, and data parallelism across processes.

``init_context`` is the one place that touches MindSpore's global context. Under ``msrun`` (or any launcher
that sets the communication environment) ``use_parallel=True`` initialises collective communication and
returns this process's rank and the number of processes. On CPU only data parallelism exists; the
semi-automatic and automatic modes need Ascend/GPU and are refused with that reason.
"""
import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

import mindspore as ms

from ..utils import logger

PARALLEL_MODES = ("data_parallel", "semi_auto_parallel", "auto_parallel", "stand_alone")


@dataclass
class ContextConfig:
    """MindSpore's execution settings (MindFormers' ``context:`` section)."""

    mode: int = 1
    """0: GRAPH_MODE, 1: PYNATIVE_MODE (training steps are compiled with mindspore.jit either way)."""
    device_target: str = "CPU"
    """CPU, GPU or Ascend."""
    device_id: int = 0
    """Device of this process (under msrun the local rank is used)."""
    max_call_depth: int = 10000
    """Graph compiler recursion limit."""
    launch_blocking: bool = True
    """Run eager ops synchronously: on CPU it makes PyNative ~10x faster (see MINDSPORE_CPU.md)."""


@dataclass
class ParallelContextConfig:
    """How processes share the work (MindFormers' ``parallel:`` section)."""

    parallel_mode: str = "data_parallel"
    """data_parallel (any device), semi_auto_parallel / auto_parallel (Ascend/GPU only)."""
    gradients_mean: bool = True
    """Average gradients across processes (sum when False)."""
    full_batch: bool = False
    """Every process reads the whole batch (model parallel); False: each reads its own shard."""


def _from(cls, value, where: str):
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - valid)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; valid: {sorted(valid)}")
        return cls(**value)
    raise TypeError(f"{where} must be a {cls.__name__} or a dict, got {type(value).__name__}")


def init_context(use_parallel: bool = False, context_config: Optional[Union[ContextConfig, Dict[str, Any]]] = None,
                 parallel_config: Optional[Union[ParallelContextConfig, Dict[str, Any]]] = None) -> Tuple[int, int]:
    """Configure MindSpore for this process.

    Args:
        use_parallel: join the process group started by msrun (data parallel on CPU).
        context_config: device and mode settings.
        parallel_config: parallel settings (used with ``use_parallel``).
    Returns:
        ``(rank_id, device_num)``: (0, 1) for a single process.
    """
    context = _from(ContextConfig, context_config, "context_config")
    parallel = _from(ParallelContextConfig, parallel_config, "parallel_config")
    if context.mode not in (0, 1):
        raise ValueError(f"context mode must be 0 (GRAPH_MODE) or 1 (PYNATIVE_MODE), found {context.mode}")
    if parallel.parallel_mode not in PARALLEL_MODES:
        raise ValueError(f"parallel_mode must be one of {PARALLEL_MODES}, found {parallel.parallel_mode!r}")
    device = {"cpu": "CPU", "gpu": "GPU", "ascend": "Ascend"}.get(context.device_target.lower())
    if device is None:
        raise ValueError(f"device_target must be CPU, GPU or Ascend, found {context.device_target!r}")
    ms.set_context(mode=context.mode, max_call_depth=context.max_call_depth)
    if use_parallel:
        ms.set_device(device)  # the launcher assigns devices to ranks
    else:
        ms.set_device(device, context.device_id)
    if context.launch_blocking and device == "CPU":
        ms.runtime.launch_blocking()
    if not use_parallel:
        return 0, 1
    if device == "CPU" and parallel.parallel_mode in ("semi_auto_parallel", "auto_parallel"):
        raise ValueError(f"parallel_mode {parallel.parallel_mode!r} needs Ascend or GPU (MindSpore runs only "
                         "data_parallel on CPU); use parallel_mode: data_parallel")
    if "MS_WORKER_NUM" not in os.environ and "RANK_SIZE" not in os.environ:
        raise RuntimeError("use_parallel=True needs a process group: start the script with msrun "
                           "(scripts/msrun_launcher.sh \"run_mindformer.py ... --use_parallel True\" 2)")
    from mindspore.communication import get_group_size, get_rank, init

    init()
    rank, size = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=parallel.parallel_mode, gradients_mean=parallel.gradients_mean,
                                 device_num=size)
    logger.info("rank %d of %d, %s", rank, size, parallel.parallel_mode)
    return rank, size
