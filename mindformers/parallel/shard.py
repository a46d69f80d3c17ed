"""Apply a family's ``tp_plan`` to a model for MindSpore's semi-automatic parallelism: the one place where
strategies (``Primitive.shard``) and pipeline stages are set.

Each Cell that holds weights reads them with a primitive of its own (``Linear.matmul`` / ``add``,
``Conv1D.matmul`` / ``add``, ``Embedding.gather``, ``Experts.gate_up_matmul`` / ``down_matmul``,
``Router.matmul_nt``, a tied head's ``tied_matmul``); :func:`apply_strategies` looks each Cell up in the
family's ``tp_plan`` (:func:`~mindformers.parallel.plan.module_style`) and shards that primitive as the style
says (MindFormers' Llama strategies, ``dp`` / ``mp`` / ``ep`` = data / model / expert parallel)::

    colwise    Linear [out, in]  MatMul(transpose_b) ((dp, 1), (mp, 1)), bias Add ((dp, mp), (mp,))
               Conv1D [in, out]  MatMul ((dp, 1), (1, mp))
    rowwise    Linear            ((dp, mp), (1, mp)) then an all-reduce; bias Add ((dp, 1), (1,))
               Conv1D            ((dp, mp), (mp, 1))
    vocab      Embedding         Gather ((mp, 1), (dp, 1)); ((1, 1), (dp, 1)) with vocab_emb_dp
    head       Linear / tied     ((dp, 1), (mp, 1)); ((dp, 1), (1, 1)) with vocab_emb_dp
    experts    Experts           BatchMatMul gate_up ((ep, dp/ep, 1), (ep, mp, 1)), down ((ep, dp/ep, mp), (ep, 1, mp))
    replicate  any               weights whole, rows split by dp

MindSpore splits a Parameter by the strategy of the op that reads it, so the per-device shapes follow from
these and equal the plan's ``local_shape`` (tests/parallel/test_dryrun.py compiles and compares). Every other
op keeps MindSpore's default (its first dimension split over the devices of the stage) and MindSpore inserts
the communication between layouts, so the result is the one-device result.

WARNING: a split dimension is cut into contiguous blocks. The experts' fused ``gate_up_proj`` [E, 2I, H] split
by model_parallel gives the first devices of a group gate rows only and the last ones up rows only; MindSpore
then gathers the [E, tokens, 2I] product over the group before ``silu(gate) * up`` (exact, at the cost of that
all-gather). Keeping each device's gate and up rows together would need two tensors or an interleaved
storage order, which the Hugging Face layout does not have.

A LoRA layer takes its base layer's split (:func:`~mindformers.parallel.plan.module_style`): its base product
as above; on a column-parallel base ``lora_B`` is split like the base and ``lora_A`` whole, on a row-parallel
base ``lora_A`` is split like the base (the all-reduce follows it) and ``lora_B`` whole.

Pipeline stages: each decoder layer, and every other Cell holding weights, goes to
:func:`~mindformers.parallel.plan.stage_of` of its parameters (embeddings first, final norm and head last).
"""
import re
from typing import Dict

from ..models.common.layers import Conv1D, Embedding, Linear
from ..models.common.moe import Experts, Router
from ..tuners.lora.layer import LoraLinear
from .config import ParallelConfig
from .plan import module_style, stage_of

_LAYER_PATH = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.\d+$")


def apply_strategies(model, parallel: ParallelConfig) -> Dict[str, str]:
    """Shard the primitives of ``model`` as its family's ``tp_plan`` says and assign pipeline stages.

    Call it before the model is compiled under ``semi_auto_parallel``; in a stand-alone run strategies are
    ignored by MindSpore (the numbers are the same either way).

    Args:
        model: a model of this package (its ``config`` carries ``tp_plan``).
        parallel: the split; checked against the model first.
    Returns:
        ``{module path: style}`` of every Cell that got a strategy.
    Raises:
        ValueError: the split does not fit the model (see :meth:`ParallelConfig.check`).
    """
    config = model.config
    parallel.check(config)
    dp, mp, ep = parallel.data_parallel, parallel.model_parallel, parallel.expert_parallel
    vocab = 1 if parallel.vocab_emb_dp else mp
    applied = {}
    for path, cell in model.cells_and_names():
        style = module_style(config, path)
        if isinstance(cell, Linear):
            split = {"colwise": mp, "head": vocab}.get(style, 1)
            if style == "rowwise":
                cell.matmul.shard(((dp, mp), (1, mp)))
                cell.add.shard(((dp, 1), (1,)))
            else:
                cell.matmul.shard(((dp, 1), (split, 1)))
                cell.add.shard(((dp, split), (split,)))
        elif isinstance(cell, Conv1D):
            if style == "rowwise":
                cell.matmul.shard(((dp, mp), (mp, 1)))
                cell.add.shard(((dp, 1), (1,)))
            else:
                split = mp if style == "colwise" else 1
                cell.matmul.shard(((dp, 1), (1, split)))
                cell.add.shard(((dp, split), (split,)))
        elif isinstance(cell, LoraLinear):  # the base product; its factors are Linears of their own
            conv = cell.fan_in_fan_out
            if style == "rowwise":
                cell.base_matmul.shard(((dp, mp), (mp, 1)) if conv else ((dp, mp), (1, mp)))
            elif style == "colwise":
                cell.base_matmul.shard(((dp, 1), (1, mp)) if conv else ((dp, 1), (mp, 1)))
            else:
                cell.base_matmul.shard(((dp, 1), (1, 1)))
        elif isinstance(cell, Embedding):
            cell.gather.shard(((vocab if style == "vocab" else 1, 1), (dp, 1)))
        elif isinstance(cell, Experts):
            cell.per_expert = True
            cell.gate_up_matmul.shard(((ep, dp // ep, 1), (ep, mp, 1)))
            cell.down_matmul.shard(((ep, dp // ep, mp), (ep, 1, mp)))
            style = "experts"
        elif isinstance(cell, Router):
            cell.matmul_nt.shard(((dp, 1), (1, 1)))
        elif getattr(cell, "tied_matmul", None) is not None:  # a causal LM whose head is its embedding
            cell.tied_matmul.shard(((dp, 1), (vocab, 1)))
            style = "head"
        else:
            continue
        applied[path] = style
    if parallel.pipeline_stage > 1:
        _assign_stages(model, config.num_hidden_layers, parallel.pipeline_stage)
    return applied


def _assign_stages(model, layers: int, pipeline_stage: int) -> None:
    for path, cell in model.cells_and_names():
        if _LAYER_PATH.search(path):
            cell.pipeline_stage = stage_of(f"{path}.", layers, pipeline_stage)
            continue
        own = [p for p in cell.get_parameters(expand=False)]
        if own:
            name = own[0].name if own[0].name.startswith(path) else f"{path}.{own[0].name}"
            cell.pipeline_stage = stage_of(name, layers, pipeline_stage)
