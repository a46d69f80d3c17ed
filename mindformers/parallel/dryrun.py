"""Compile a model's real training step for one rank of a split, on this machine, with MindSpore's dry run.

    from mindformers.parallel.dryrun import compile_step
    result = compile_step(config, ParallelConfig(data_parallel=2, model_parallel=4), rank=0)
    result["parameters"]["model.layers.0.self_attn.q_proj.weight"]   # [32, 128]: what rank 0 holds

MindSpore compiles a ``semi_auto_parallel`` step for ``RANK_SIZE`` Ascend devices without any device when
``MS_SIMULATION_LEVEL=0`` is set ("dummy collective communication"): the whole graph is split, communication
inserted and each rank's parameter slices fixed, and nothing runs. That needs the Ascend plugin of the wheel
to load, which stub CANN libraries built here allow (:mod:`mindformers.parallel.cannstub`). The compile runs in
a subprocess (the device target, the simulation and the rank are process-wide, and such a process must
leave with ``os._exit``), with:

- ``semi_auto_parallel`` over ``device_num`` devices, ``full_batch`` (every rank reads the whole batch),
  ``pipeline_stages``, and ``enable_parallel_optimizer`` for ``optimizer_shard``;
- the model's strategies and stages from :func:`mindformers.parallel.shard.apply_strategies`;
- the step: the model's causal-LM loss on ``batch_size x seq_length`` token ids, its gradients and an
  ``AdamWeightDecay`` update; with pipeline stages the loss goes through MindSpore's ``Pipeline`` cell
  (``micro_batch_num`` micro-batches) and gradient-accumulation step (``TrainOneStepCell`` does not compile
  under pipeline parallelism: "The pointer[grad_accu] is null").

The model is built without weights (:func:`~mindformers.parallel.plan.build_skeleton`), so any size compiles.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, Optional

from mindspore import nn

from .config import ParallelConfig


class DryRunError(RuntimeError):
    """The dry run could not compile the step (MindSpore's reason, in one line)."""


def compile_step(config, parallel: ParallelConfig, rank: int = 0, seq_length: Optional[int] = None,
                 batch_size: Optional[int] = None, timeout: float = 600.0,
                 strategy_file: Optional[str] = None) -> Dict[str, Any]:
    """Compile one training step of the model ``config`` describes for rank ``rank`` of ``parallel``.

    Args:
        config: a model config of this package.
        parallel: the split (``device_num`` = data_parallel x model_parallel x pipeline_stage devices).
        rank: the rank to compile for, ``0 <= rank < device_num``.
        seq_length: tokens per row (default: ``max_position_embeddings``).
        batch_size: global batch (default: data_parallel x micro_batch_num).
        timeout: seconds before the compile is given up.
        strategy_file: also write MindSpore's strategy checkpoint (every rank's layouts) here.
    Returns:
        ``{"rank", "compiled": True, "seconds", "parameters": {name: per-device shape}, "stored": {name: shape}}``:
        ``parameters`` lists the parameters rank ``rank`` holds (those of its pipeline stage) with the shape of
        its slice, names as in the Hugging Face checkpoint; ``stored`` the shapes the rank keeps between steps
        where ``optimizer_shard`` splits them further over the data-parallel copies.
    Raises:
        ValueError: the split does not fit the model, or a bad argument.
        DryRunError: MindSpore refused the strategies, or the compile failed or timed out.
        RuntimeError: the stub libraries cannot be built (gcc, g++, nm or readelf missing).
    """
    from .cannstub import ensure_stubs

    seq_length = seq_length or config.max_position_embeddings
    batch_size = batch_size or parallel.data_parallel * parallel.micro_batch_num
    parallel.check(config, batch_size=batch_size, seq_length=seq_length)
    devices = parallel.device_num
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < devices:
        raise ValueError(f"rank must be an integer in [0, {devices}) for {devices} devices, found {rank!r}")
    if parallel.use_seq_parallel:
        raise ValueError("use_seq_parallel is not applied by the dry run (no sequence-parallel strategies yet); "
                         "plan without it")
    if parallel.pipeline_stage > 1 and (batch_size // parallel.micro_batch_num) % parallel.data_parallel:
        raise ValueError(f"each of the {parallel.micro_batch_num} micro-batches of the batch ({batch_size}) must split "
                         f"over data_parallel ({parallel.data_parallel})")
    env = dict(os.environ)
    for key, value in ensure_stubs().items():
        env[key] = value + (os.pathsep + env[key] if env.get(key) else "")
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] += os.pathsep + package_root
    env.update(MS_SIMULATION_LEVEL="0", RANK_SIZE=str(devices), RANK_ID=str(rank), GLOG_v="3")
    env.pop("MS_WORKER_NUM", None)  # not an msrun worker
    with tempfile.TemporaryDirectory(prefix="mindformers-dryrun-") as work:
        config.save_pretrained(os.path.join(work, "model"))
        spec = {"config_dir": os.path.join(work, "model"), "parallel": vars(parallel).copy(), "rank": rank,
                "seq_length": seq_length, "batch_size": batch_size, "out": os.path.join(work, "result.json"),
                "strategy_file": os.path.abspath(strategy_file) if strategy_file else None}
        with open(os.path.join(work, "spec.json"), "w") as f:
            json.dump(spec, f)
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", "mindformers.parallel.dryrun", os.path.join(work, "spec.json")],
                                  env=env, cwd=work, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DryRunError(f"the dry-run compile of rank {rank} did not finish within {timeout:.0f} s") from None
        seconds = time.perf_counter() - start
        if not os.path.exists(spec["out"]):
            raise DryRunError(f"the dry-run process for rank {rank} died (exit {proc.returncode}): "
                              f"{_first_error(proc.stderr) or proc.stderr.strip()[-500:]}")
        with open(spec["out"]) as f:
            result = json.load(f)
    if not result["compiled"]:
        reason = _first_error(proc.stderr)
        raise DryRunError(f"MindSpore refused the split on rank {rank}: {result['error']}"
                          + (f" ({reason})" if reason and reason not in result["error"] else ""))
    result["seconds"] = round(seconds, 2)
    return result


def _first_error(log: str) -> str:
    """MindSpore's first parallel error message in ``log`` (its C++ [ERROR] lines), without the prefix."""
    for line in log.splitlines():
        match = re.match(r"\[ERROR\] (?:PARALLEL|ME|PIPELINE|ANALYZER)\(.*?\] (?:\S+\] )?(.*)", line)
        if match and "CheckFailed" not in line:
            return match.group(1).strip()
    return ""


# ------------------------------------------------------------------------------ the compile process
def _worker(spec_path: str) -> None:
    """Run in the subprocess: compile the step described by ``spec_path`` and write the result JSON."""
    with open(spec_path) as f:
        spec = json.load(f)
    result = {"rank": spec["rank"], "compiled": False}
    try:
        result.update(_compile(spec))
        result["compiled"] = True
    except Exception as err:  # noqa: BLE001  (MindSpore raises RuntimeError/ValueError/TypeError)
        result["error"] = str(err).strip().split("\n")[0]
    with open(spec["out"], "w") as f:
        json.dump(result, f)


def _compile(spec: Dict[str, Any]) -> Dict[str, Any]:
    import numpy as np
    import mindspore as ms
    from mindspore import Tensor
    from mindspore.common.api import _cell_graph_executor
    from mindspore.communication import init
    from mindspore.nn.wrap.cell_wrapper import _TrainGradAccuStepCell
    from mindspore.parallel.nn import Pipeline

    from ..auto import AutoConfig
    from .plan import build_skeleton
    from .shard import apply_strategies

    parallel = ParallelConfig(**spec["parallel"])
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("Ascend")
    init()
    strategy = {"save_file": spec["strategy_file"], "only_trainable_params": False} if spec["strategy_file"] else None
    ms.set_auto_parallel_context(parallel_mode="semi_auto_parallel", device_num=parallel.device_num, full_batch=True,
                                 pipeline_stages=parallel.pipeline_stage,
                                 enable_parallel_optimizer=parallel.optimizer_shard,
                                 **({"strategy_ckpt_config": strategy} if strategy else {}))
    config = AutoConfig.from_pretrained(spec["config_dir"])
    model = build_skeleton(config)
    apply_strategies(model, parallel)
    net = _LossOf(model)
    if parallel.pipeline_stage > 1:
        net = Pipeline(net, parallel.micro_batch_num)
    optimizer = nn.AdamWeightDecay(net.trainable_params(), learning_rate=1e-4)
    step = _TrainGradAccuStepCell(net, optimizer) if parallel.pipeline_stage > 1 else nn.TrainOneStepCell(net, optimizer)
    step.set_train()
    ids = Tensor(np.zeros((spec["batch_size"], spec["seq_length"]), np.int32))
    _cell_graph_executor.compile(step, ids, ids, phase="train")
    layouts = step.parameter_layout_dict
    parameters, stored = {}, {}
    for name, param in model.parameters_and_names():
        layout = layouts.get(param.name)
        if layout is None:  # another stage's parameter
            continue
        parameters[name] = [int(d) for d in layout[2]]  # the slice this rank's ops use
        if list(param.shape) != parameters[name]:  # optimizer_shard keeps a further slice between steps
            stored[name] = [int(d) for d in param.shape]
    return {"parameters": parameters, "stored": stored}


class _LossOf(nn.Cell):
    """The model's causal-LM loss on ``input_ids`` with ``labels`` (parameter names unchanged)."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, input_ids, labels):
        return self.model(input_ids, None, None, labels)[0]


if __name__ == "__main__":
    _worker(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # MindSpore aborts at interpreter exit after a dry run
