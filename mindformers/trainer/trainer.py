"""The task Trainer: ``train``, ``finetune``, ``evaluate`` and ``predict`` with MindFormers' signatures.

A run reads top to bottom as setup -> train -> cleanup:
- setup: the model (a preset, path or instance; with LoRA when its config has ``pet_config``), the
  tokenizer, the datasets, the optimizer, and a checkpoint to resume from;
- train: micro-batches -> compiled forward/backward -> (gradient accumulation) -> average gradients over
  data-parallel ranks -> clip -> optimizer step, with the learning rate set from the step; logging,
  evaluation and checkpoints every N steps;
- cleanup: a final checkpoint, the loss curve and closed logs.

With several ranks, a rank that dies or fails during training stops the others, which would wait for it in
their next collective forever (mindformers/parallel/watchdog.py).
"""
import math
import os
import time
import weakref
from typing import Any, Dict, Iterator, List, Optional, Union

import numpy as np
import mindspore as ms
from mindspore import Tensor, ops

from ..kernels import host
from ..registry import TASKS
from ..parallel.config import ParallelConfig, RecomputeConfig
from ..parallel.watchdog import WATCHDOG_DIR, watch_ranks
from ..utils import graphs_compiled, graphs_released_after, logger, release_graphs
from .args import TrainingArguments
from .callbacks import CallbackList, default_callbacks
from .checkpointing import (checkpoint_step, earlier_run_files, load_checkpoint, remove_stale_temporaries, resolve_resume,
                            rotate_checkpoints, save_checkpoint, tuner_of)
from .optim import build_optimizer, global_norm, scale_all, schedule_factor
from .state import TrainerState

RUN_SECTIONS = ("model", "processor", "training", "train_dataset", "eval_dataset", "task", "run_mode", "context",
                "parallel", "parallel_config", "recompute_config", "trainer")


def _world() -> tuple:
    """(rank, size) of the process group, or (0, 1) when none was initialised."""
    try:
        from mindspore.communication import get_group_size, get_rank

        return get_rank(), get_group_size()
    except (RuntimeError, ValueError):
        return 0, 1


def fit_rows(batch: Dict[str, np.ndarray], seq_length: Optional[int], task: str) -> Dict[str, np.ndarray]:
    """A batch the model can take. MindFormers' pre-training data yields rows of ``seq_length + 1`` tokens
    (inputs ``row[:-1]``, targets ``row[1:]``): the model gets ``row[:-1]`` and the labels keep all
    ``seq_length + 1`` ids, which the loss aligns (label t+1 for position t). Longer rows are an error.

    Args:
        batch: ``input_ids``, ``attention_mask``, ``labels`` [batch, length]; seq_length: the model's
            ``max_position_embeddings`` (None: no check); task: the model's task.
    """
    length = batch["input_ids"].shape[1]
    if seq_length is None or length <= seq_length:
        return batch
    if length == seq_length + 1 and task == "causal_lm" and batch["labels"].shape == batch["input_ids"].shape:
        return {"input_ids": batch["input_ids"][:, :-1], "attention_mask": batch["attention_mask"][:, :-1],
                "labels": batch["labels"]}
    raise ValueError(f"the data has rows of {length} tokens, but the model takes at most seq_length={seq_length} "
                     f"(max_position_embeddings); give rows of at most seq_length tokens, or of seq_length + 1 "
                     f"(MindFormers' pre-training rows: inputs row[:-1], labels row[1:]), or a model with a "
                     f"larger seq_length")


def _remove_file(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _tied_table_index(model, parameters, tuner, tensor_parallel) -> Optional[int]:
    """Where a causal LM's tied embedding table is in ``parameters`` if the training step should look the
    tokens up outside the differentiated function (see :func:`_lookup_outside`), else None.

    Only where it pays and is exact: the host kernels run (CPU), the model has no tuner (a frozen table has no
    gradient; a tuner may wrap the lookup) and no tensor parallelism (a split table's rows live on several
    ranks), and the table is trained in float32."""
    if tuner is not None or tensor_parallel is not None or not hasattr(model, "tied_embedding_table"):
        return None
    table = model.tied_embedding_table()
    if table is None or table.dtype != ms.float32:
        return None
    for i, param in enumerate(parameters):
        if param is table:
            return i
    return None


def _lookup_outside(loss_of_embeds, parameters, tied: int):
    """``value_and_grad`` of a step whose tied table (``parameters[tied]``) is looked up before the loss
    function, which takes the token embeddings as its first argument.

    Autodiff of the whole model builds the table's gradient three times: the head's, the lookup's as a dense
    [vocab, hidden] tensor (its Gather's gradient) and their sum, ~113 MB each for SmolLM2, all alive at the
    end of the backward pass. Here the loss is differentiated with respect to the embeddings, whose gradient
    rows the host kernel adds into the head's gradient in place: the same gradient, one table-sized tensor."""
    table = parameters[tied]
    grads_of = ms.value_and_grad(loss_of_embeds, 0, parameters, has_aux=True)

    def value_and_grad(input_ids, attention_mask, labels):
        embeds = ops.gather(table, input_ids, 0)
        value, (d_embeds, grads) = grads_of(embeds, input_ids, attention_mask, labels)
        written = host.embedding_grad_add_(grads[tied], input_ids, d_embeds)
        return value, grads[:tied] + (ops.depend(grads[tied], written),) + grads[tied + 1:]

    return value_and_grad


class _StepFunctions:
    """The compiled pieces of a training step.

    The loss of a step is the mean over every scored token (label != -100) of its global batch: all
    micro-batches of all data-parallel ranks. Micro-batches hold different numbers of scored tokens, so a
    plain mean of their gradients would weigh tokens unequally; instead each contributes
    ``tokens_i * grad_i`` and the update divides the sum by ``sum(tokens_i)``. A step then equals one
    large batch, whatever the accumulation and the number of ranks.

    ``step`` is a whole optimizer step on one batch (one graph: forward, backward, sums over ranks, clip,
    update) returning (loss, gradient norm, router aux loss). With gradient accumulation, ``gradients``
    returns one micro-batch's ((loss, aux loss), gradients) and ``update`` applies the summed, weighted ones.
    The aux loss is the MoE load-balancing loss (0 for other models), already inside the loss.

    Tuner methods' training hooks (:class:`~mindformers.tuners.tuner_layer.TunerMethod`): a ``regulariser`` is
    added to the loss inside the graph, and the optimizer keeps the gradients that ``after_step`` hooks read
    (``TunerModel.keep_step_gradients``; the Trainer hands them over after each step).
    """

    def __init__(self, model, optimizer, args: TrainingArguments, world_size: int, tensor_parallel=None):
        self.optimizer = optimizer
        self.max_norm = args.max_grad_norm or 0.0
        if tensor_parallel is None:
            self.all_reduce = ops.AllReduce() if world_size > 1 else None  # sum over ranks
            self.sharded, self.tp_reduce = None, None
        else:  # gradients sum over the data-parallel replicas; a split tensor's norm over its group
            dp = tensor_parallel.dp_size > 1
            self.all_reduce = ops.AllReduce(group=tensor_parallel.dp_group) if dp else None
            self.sharded = tensor_parallel.sharded_mask(optimizer.parameters)
            self.tp_reduce = ops.AllReduce(group=tensor_parallel.tp_group)

        # MoE models with output_router_logits return (loss, logits, aux_loss); the loss includes the aux term
        reports_aux = getattr(model, "config", None) is not None and model.config.aux_loss_settings() is not None
        self.reports_aux = reports_aux
        tuner = tuner_of(model)
        regulariser = tuner.training_regulariser() if tuner is not None else None
        if tuner is not None:
            self.optimizer = tuner.keep_step_gradients(optimizer)
            if self.optimizer is not optimizer and tensor_parallel is not None:
                raise ValueError("a tuner method that reads each step's gradients (AdaLoRA's rank allocation) needs "
                                 "whole gradients; train it without tensor parallelism (model_parallel=1)")

        def loss_and_aux(out):
            loss = out[0] if regulariser is None else out[0] + regulariser()
            return loss, (out[2] if reports_aux else ops.zeros((), ms.float32))

        def loss_of(input_ids, attention_mask, labels):
            return loss_and_aux(model(input_ids, attention_mask, None, labels))

        self.fused = host.enabled()  # gradient norms with the host kernel (CPU)
        # the index of a tied table looked up outside the differentiated function, or None
        self.tied_table = _tied_table_index(model, optimizer.parameters, tuner, tensor_parallel) if self.fused else None
        tied = self.tied_table
        if tied is None:
            self._value_and_grad = ms.value_and_grad(loss_of, None, optimizer.parameters, has_aux=True)
        else:
            def loss_of_embeds(inputs_embeds, input_ids, attention_mask, labels):
                return loss_and_aux(model(input_ids, attention_mask, None, labels, inputs_embeds))

            self._value_and_grad = _lookup_outside(loss_of_embeds, optimizer.parameters, tied)
        self.fuses_scale = bool(getattr(self.optimizer, "fuses_grad_scale", False))
        # The update is always compiled: MindSpore's optimizers compile their own inner step when called
        # eagerly and would compile it again for every new tuple of gradients.
        self._update_compiled = ms.jit(self._update)
        if args.mode == "jit":
            self.gradients = ms.jit(self._value_and_grad)
            self.step = ms.jit(self._step)
        else:  # eager forward and backward, for debugging a model
            self.gradients = self._value_and_grad
            self.step = self._eager_step

    def _step(self, input_ids, attention_mask, labels, tokens, lr_factor, constants=()):
        (loss, aux), grads = self._value_and_grad(input_ids, attention_mask, labels)
        loss, norm = self._update(grads, tokens, loss * tokens, tokens, lr_factor, constants)
        return loss, norm, aux

    def _eager_step(self, input_ids, attention_mask, labels, tokens, lr_factor, constants=()):
        (loss, aux), grads = self._value_and_grad(input_ids, attention_mask, labels)
        return self.update(grads, loss * tokens, tokens, lr_factor, constants, weight=tokens) + (aux,)

    def update(self, weighted_grads, loss_sum, tokens, lr_factor, constants=(), weight=None):
        """Apply gradients summed outside the compiled step (``weight * weighted_grads``, weight 1 by
        default); returns (mean loss, gradient norm)."""
        # WARNING: a tuple of tensors passed to a compiled function is a constant unless marked mutable,
        # and every new value would compile a new graph.
        weight = ops.ones((1,), ms.float32) if weight is None else weight
        return self._update_compiled(ms.mutable(tuple(weighted_grads)), weight, loss_sum, tokens, lr_factor,
                                     constants)

    def _update(self, grads, weight, loss_sum, tokens, lr_factor, constants=()):
        """``weight * grads``: the sum of tokens_i * grad_i over this rank's micro-batches (one micro-batch:
        its mean-loss gradients and weight = its token count); ``loss_sum`` and ``tokens`` ([1] tensors)
        likewise for the loss and the scored-token count; ``lr_factor``: the schedule's multiplier of each
        group's peak learning rate; ``constants``: the optimizer's ``step_constants()`` (Python values: one
        graph per distinct value).

        The optimizer sees the gradient of the whole global batch (accumulated, summed over the ranks,
        clipped), so whatever it derives from it (GaLore's projection) is the same on every rank. The
        weighting and clipping are one factor on the gradients, which an optimizer that ``fuses_grad_scale``
        applies inside its update (on CPU every pass over all gradients costs ~0.5 s for a 135M model)."""
        if self.all_reduce is not None:  # data parallel: sums over all ranks
            grads = ops.HyperMap()(self.all_reduce, scale_all(grads, weight))
            weight = ops.ones_like(weight)
            loss_sum, tokens = self.all_reduce(loss_sum), self.all_reduce(tokens)
        tokens = ops.maximum(tokens, 1.0)  # a batch without scored tokens contributes nothing
        scale = (weight / tokens).reshape(())  # the gradient is scale * grads
        norm = (global_norm(grads, self.fused) if self.sharded is None else self._split_norm(grads)) * scale
        if self.max_norm > 0:
            scale = scale * ops.minimum(self.max_norm / (norm + 1e-6), 1.0)
        if self.fuses_scale:
            self.optimizer(grads, lr_factor, constants, scale)
        else:
            self.optimizer(scale_all(grads, scale), lr_factor, constants)
        return loss_sum / tokens, norm

    def _split_norm(self, grads):
        """The global gradient norm under tensor parallelism: the squares of split tensors summed over the
        group, the replicated ones (the same on every rank) counted once."""
        split, whole = (), ()
        for i, is_split in enumerate(self.sharded):
            if is_split:
                split = split + (grads[i],)
            else:
                whole = whole + (grads[i],)
        squares = ops.square(global_norm(whole, self.fused)) if whole else ops.zeros((), ms.float32)
        if split:
            squares = squares + self.tp_reduce(ops.square(global_norm(split, self.fused)))
        return ops.sqrt(squares)


class Trainer:
    """Train, fine-tune, evaluate and predict for a registered task.

    Args:
        task: a task of the ``TASKS`` registry with a trainable model ("text_generation",
            "text_classification").
        model: a preset name, a path (HF directory, YAML, GGUF) or a model instance; None takes the run
            YAML's ``model:`` section.
        args: TrainingArguments, a dict of them, or a run YAML (``training:``, ``model:``, ``train_dataset:``,
            ``eval_dataset:``, ``task:`` sections).
        train_dataset, eval_dataset: a JSON/JSONL/text file, a list of records, a TokenizedDataset, or a
            MindSpore dataset yielding ``input_ids`` (and optionally ``labels``, ``attention_mask``).
        tokenizer: a tokenizer or its source; default: the model's.
        callbacks: extra TrainerCallbacks.
    """

    def __init__(self, task: str = "text_generation", model: Any = None, args: Any = None, train_dataset: Any = None,
                 eval_dataset: Any = None, tokenizer: Any = None, callbacks: Optional[List] = None):
        run: Dict[str, Any] = {}
        where = "run config"
        if isinstance(args, str):
            from ..presets import load_yaml

            run, where = load_yaml(args), args
        elif isinstance(args, dict) and set(args) & set(RUN_SECTIONS):
            run = args
        if run:
            unknown = sorted(set(run) - set(RUN_SECTIONS))
            if unknown:
                raise ValueError(f"{where}: unknown section(s) {unknown}; valid: {', '.join(RUN_SECTIONS)}")
            self.args = TrainingArguments.from_dict(run.get("training") or {}, where)
        elif isinstance(args, dict):
            self.args = TrainingArguments.from_dict(args)
        else:
            self.args = args or TrainingArguments()
        self.task = run.get("task", task)
        entry = TASKS.get(self.task)
        self.model_task = getattr(entry, "model_task", None)
        if self.model_task is None:
            trainable = [n for n in TASKS.names() if getattr(TASKS.get(n), "model_task", None)]
            raise ValueError(f"task {self.task!r} has no trainable model; trainable tasks: {trainable}")
        self._model_source = model if model is not None else (self._model_yaml(run, args) if run.get("model") else None)
        if self._model_source is None:
            raise ValueError("no model: pass model= (a preset name, path or instance) or a run YAML with a model: section")
        self._tokenizer_source = tokenizer
        self._train_source = train_dataset if train_dataset is not None else run.get("train_dataset")
        self._eval_source = eval_dataset if eval_dataset is not None else run.get("eval_dataset")
        self.rank, self.world_size = _world()
        self.callbacks = CallbackList(default_callbacks(self.args) + list(callbacks or []))
        if self.args.lisa_activated_layers > 0:  # a training-side tuner: mindformers/tuners/lisa
            from ..tuners.lisa import LisaCallback

            self.callbacks.add(LisaCallback(self.args.lisa_activated_layers, self.args.lisa_step_interval,
                                            seed=self.args.seed))
        self.model = None
        self._untouched = None  # the pretrained model while no step or checkpoint has changed it
        self._eval_for, self._eval_compiled = None, None  # the model the evaluation step was built for, and it
        # compile phases of this trainer's evaluation steps: MindSpore keeps compiled graphs for the life of the
        # process, so they are freed when the trainer goes (a test suite or notebook makes many trainers)
        self._eval_graphs: set = set()
        weakref.finalize(self, release_graphs, self._eval_graphs)
        self._tokenizer = None
        self.parallel_config = ParallelConfig.from_dict(run.get("parallel_config"), f"{where}: parallel_config")
        self._tensor_parallel = None  # a TensorParallelRun when model_parallel > 1 under msrun on CPU
        self._data_rank, self._data_world = self.rank, self.world_size
        self._sharded = False  # semi-automatic parallelism: MindSpore reduces the gradients itself
        self.recompute_config = RecomputeConfig.from_dict(run.get("recompute_config"), f"{where}: recompute_config")

    def _model_yaml(self, run: Dict[str, Any], args: Any) -> str:
        """A YAML path the Auto classes can read for the run's model (and processor) sections; one written
        for a run dict is a temporary file that lives as long as this Trainer."""
        if isinstance(args, str):
            return args
        import tempfile

        import yaml

        handle, path = tempfile.mkstemp(suffix=".yaml", prefix="mindformers-model-")
        with os.fdopen(handle, "w") as f:
            yaml.safe_dump({k: run[k] for k in ("model", "processor") if k in run}, f)
        weakref.finalize(self, _remove_file, path)
        return path

    # ------------------------------------------------------------------ configuration
    def set_parallel_config(self, data_parallel: int = 1, model_parallel: int = 1, context_parallel: int = 1,
                            vocab_emb_dp: bool = True, use_seq_parallel: bool = False, pipeline_stage: int = 1,
                            micro_batch_num: int = 1, micro_batch_interleave_num: int = 1,
                            gradient_aggregation_group: int = 4, expert_parallel: int = 1,
                            optimizer_shard: bool = False) -> None:
        """MindFormers' ``set_parallel_config``: how the model is split (see :class:`ParallelConfig`). It is
        checked against the model when training starts; in a stand-alone run (one process) the split takes
        no effect and a warning says so, as MindFormers documents."""
        for name, value in (("context_parallel", context_parallel), ("micro_batch_interleave_num", micro_batch_interleave_num)):
            if value != 1:
                raise ValueError(f"{name}={value} is not supported (only 1)")
        self.parallel_config = ParallelConfig(
            data_parallel=data_parallel, model_parallel=model_parallel, pipeline_stage=pipeline_stage,
            micro_batch_num=micro_batch_num, expert_parallel=expert_parallel, vocab_emb_dp=vocab_emb_dp,
            use_seq_parallel=use_seq_parallel, gradient_aggregation_group=gradient_aggregation_group,
            optimizer_shard=optimizer_shard)

    def set_recompute_config(self, recompute: Any = False, parallel_optimizer_comm_recompute: bool = False,
                             select_recompute: Any = False, mp_comm_recompute: bool = True,
                             recompute_slice_activation: bool = False, select_comm_recompute: bool = False) -> None:
        """MindFormers' ``set_recompute_config`` (see :class:`RecomputeConfig`): ``recompute`` recomputes whole
        decoder layers (all, or the first n of each stage), ``select_recompute`` their feed-forward blocks."""
        self.recompute_config = RecomputeConfig(
            recompute=recompute, select_recompute=select_recompute, select_comm_recompute=select_comm_recompute,
            mp_comm_recompute=mp_comm_recompute, parallel_optimizer_comm_recompute=parallel_optimizer_comm_recompute,
            recompute_slice_activation=recompute_slice_activation)

    def _check_parallel(self, model) -> None:
        """Check the split against the model and apply it the way :func:`mindformers.parallel.config.route`
        decides for this run (stand-alone warning, data, tensor or semi-automatic parallelism)."""
        from ..parallel.config import route

        parallel = self.parallel_config
        parallel.check(model.config, seq_length=self.args.seq_length)
        how = route(parallel, self.world_size, ms.get_context("device_target"),
                    ms.get_auto_parallel_context("parallel_mode"))
        if how == "stand_alone" and (parallel.is_split or parallel.data_parallel > 1):
            logger.warning("parallel_config (data_parallel %d, model_parallel %d, pipeline_stage %d%s) takes no effect "
                           "in a stand-alone run (one process): training on one device. Start the script with msrun "
                           "for data parallelism; `python -m mindformers.parallel.plan` shows the split on %d devices",
                           parallel.data_parallel, parallel.model_parallel, parallel.pipeline_stage,
                           ", optimizer_shard" if parallel.optimizer_shard else "", parallel.device_num)
        elif how == "tensor_parallel":
            self._split_model(model)
        elif how == "semi_auto_parallel":
            self._shard_model(model)

    def _shard_model(self, model) -> None:
        """Ascend/GPU: MindSpore splits the graph after the strategies (mindformers/parallel/shard.py); every
        rank reads the whole batch (full_batch) and MindSpore inserts the gradient reductions."""
        from ..parallel.shard import apply_strategies

        parallel = self.parallel_config
        if parallel.pipeline_stage > 1:
            raise NotImplementedError("the Trainer's step has no pipeline schedule yet; pipeline_stage > 1 compiles "
                                      "in the dry run (python -m mindformers.parallel.plan --dryrun)")
        tuner = tuner_of(model)
        apply_strategies(model if tuner is None else tuner.base_model, parallel)
        ms.set_auto_parallel_context(full_batch=True, enable_parallel_optimizer=parallel.optimizer_shard)
        self._data_rank, self._data_world, self._sharded = 0, 1, True

    def _split_model(self, model) -> None:
        """Tensor parallelism on CPU: split the model over groups of model_parallel processes (Megatron-style
        layers with explicit collectives, mindformers/parallel/tensor_parallel.py); the rest of the processes
        are data-parallel replicas, each reading its own shard of the data."""
        from ..parallel.tensor_parallel import TensorParallelRun

        tuner = tuner_of(model)
        target = model if tuner is None else tuner.base_model  # LoRA layers split with their bases
        if self._tensor_parallel is not None and self._tensor_parallel.model is target:
            return  # split by an earlier train() of this Trainer
        run = TensorParallelRun(self.world_size, self.parallel_config.model_parallel, self.parallel_config.vocab_emb_dp)
        split = run.split(target)
        self._tensor_parallel = run
        self._data_rank, self._data_world = run.dp_rank, run.dp_size
        logger.info("tensor parallel rank %d of %d (data-parallel replica %d of %d): %d layers split",
                    run.tp_rank, run.tp_size, run.dp_rank, run.dp_size, len(split))

    # ------------------------------------------------------------------ setup
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from ..auto import AutoTokenizer

            source = self._tokenizer_source
            if source is None:
                if not isinstance(self._model_source, str):
                    raise ValueError("a model instance was given without a tokenizer; pass tokenizer=")
                source = self._model_source
            self._tokenizer = AutoTokenizer.from_pretrained(source) if isinstance(source, str) else source
        return self._tokenizer

    def _load_model(self, pretrained: bool, checkpoint: Optional[str] = None):
        """The model to run: loaded (pretrained), or built with random weights."""
        from ..auto import AutoConfig, auto_model_for_task, model_class_for

        ms.set_seed(self.args.seed)  # adapters a model config switches on start from the run's seed
        source = self._model_source
        adapter_only = checkpoint is not None and os.path.isfile(os.path.join(checkpoint, "adapter_model.safetensors"))
        if not isinstance(source, str):
            model = source
        elif pretrained and checkpoint is None and self._untouched is not None:
            model = self._untouched  # loaded by an evaluate()/predict() before training: no second copy
        elif pretrained and (checkpoint is None or adapter_only):  # whole-model checkpoints replace every weight
            model = auto_model_for_task(self.model_task).from_pretrained(source)
        else:
            config = AutoConfig.from_pretrained(source)
            model = model_class_for(config, self.model_task).from_config(config, seed=self.args.seed)
        if checkpoint:
            self._load_weights(model, checkpoint)
        self._untouched = model if pretrained and checkpoint is None and isinstance(source, str) else None
        self.model = model
        return model

    @staticmethod
    def _load_weights(model, path: str) -> None:
        """Weights from a Hugging Face directory, a safetensors file or one of our training checkpoints."""
        from ..checkpoint import load_state_dict

        if not os.path.exists(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        tuner = tuner_of(model)
        if tuner is not None and os.path.isfile(os.path.join(path, "adapter_model.safetensors")):
            tuner.load_adapter_weights("default", load_state_dict(os.path.join(path, "adapter_model.safetensors")),
                                       peft_keys=True, source=path)
        else:
            base = tuner.base_model if tuner is not None else model
            base.load_state_dict(load_state_dict(path), strict=True)

    def _dataset(self, source, split: str):
        from ..dataset import TokenizedDataset, build_dataset

        if source is None or isinstance(source, TokenizedDataset) or hasattr(source, "create_dict_iterator"):
            return source
        options: Dict[str, Any] = {}
        if isinstance(source, dict) and not {"instruction", "messages", "text", "conversations"} & set(source):
            options = dict(source)
            source = options.pop("path", options.pop("data_path", None))
            if source is None:
                raise ValueError(f"{split} section needs `path`; found keys {sorted(options)}")
        label_names = None
        if self.model_task == "sequence_classification" and self.model is not None:
            label_names = getattr(self.model.config, "id2label", None)
        return build_dataset(source, self.tokenizer, task=self.task, seq_length=self.args.seq_length,
                             label_names=options.pop("label_names", label_names), **options)

    def _batches(self, data, batch_size: int, shuffle: bool, epoch: int, start: int = 0,
                 model=None) -> Iterator[Dict[str, np.ndarray]]:
        """Batches of ``epoch`` from the ``start``-th on (a resumed run starts inside an epoch), fitted to
        ``model``'s ``seq_length`` (see :func:`fit_rows`)."""
        limit = None if model is None else model.config.max_position_embeddings
        if hasattr(data, "create_dict_iterator"):  # a MindSpore dataset, batched by its owner
            for index, row in enumerate(data.create_dict_iterator(num_epochs=1, output_numpy=True)):
                if index < start:
                    continue
                ids = np.asarray(row["input_ids"], np.int32)
                yield fit_rows({"input_ids": ids,
                                "attention_mask": np.asarray(row.get("attention_mask", np.ones_like(ids)), np.int32),
                                "labels": np.asarray(row.get("labels", ids), np.int32)}, limit, self.model_task)
            return
        # one batch shape (seq_length, full rows) unless pad_to_multiple_of asks otherwise: one compiled graph
        for batch in data.batches(batch_size, shuffle=shuffle, seed=self.args.seed, epoch=epoch,
                                  drop_last=self.args.dataloader_drop_last if shuffle else False,
                                  rank=self._data_rank, world_size=self._data_world,
                                  pad_to_multiple_of=self.args.pad_to_multiple_of or self.args.seq_length,
                                  start_batch=start, full_last=True):
            yield fit_rows(batch, limit, self.model_task)

    def _num_batches(self, data, batch_size: int) -> int:
        if hasattr(data, "get_dataset_size"):
            return data.get_dataset_size()
        return data.num_batches(batch_size, drop_last=self.args.dataloader_drop_last, world_size=self._data_world)

    # ------------------------------------------------------------------ entry points
    def train(self, train_checkpoint: Optional[str] = None, resume_training: Optional[Union[bool, str]] = None):
        """Train from random weights (or from ``train_checkpoint``)."""
        model = self._load_model(pretrained=False, checkpoint=train_checkpoint)
        return self._train(model, resume_training)

    def finetune(self, finetune_checkpoint: Optional[str] = None, resume_training: Optional[Union[bool, str]] = None):
        """Train starting from the model's pretrained weights (or ``finetune_checkpoint``)."""
        model = self._load_model(pretrained=True, checkpoint=finetune_checkpoint)
        return self._train(model, resume_training)

    def evaluate(self, eval_dataset: Any = None, eval_checkpoint: Optional[str] = None) -> Dict[str, float]:
        """Metrics on the evaluation data: loss and perplexity (causal LM) or loss and accuracy."""
        model = self.model if self.model is not None and eval_checkpoint is None else self._load_model(True, eval_checkpoint)
        data = self._dataset(eval_dataset if eval_dataset is not None else self._eval_source, "eval_dataset")
        if data is None:
            raise ValueError("no evaluation data: pass eval_dataset= to the Trainer or to evaluate()")
        self._match_padding(model, data)
        return self._evaluate(model, data)

    def predict(self, input_data: Any = None, predict_checkpoint: Optional[str] = None, **generate_kwargs: Any):
        """Run the task's pipeline on ``input_data`` (a text, a list of texts or a chat)."""
        from ..pipeline import pipeline

        if input_data is None:
            raise ValueError("predict needs input_data (a text, a list of texts or a chat)")
        model = self.model if self.model is not None and predict_checkpoint is None else self._load_model(True, predict_checkpoint)
        runner = pipeline(self.task, model=model, tokenizer=self.tokenizer)
        return runner(input_data, **generate_kwargs)

    # ------------------------------------------------------------------ the loop
    def _train(self, model, resume) -> TrainerState:
        # the compiled training step goes with the run (the evaluation step stays: evaluate() reuses it)
        with graphs_released_after(keep="evaluate_batch"), \
                watch_ranks(os.path.join(self.args.output_dir, WATCHDOG_DIR), self.rank, self.world_size):
            return self._run_training(model, resume)

    def _run_training(self, model, resume) -> TrainerState:
        args = self.args
        if args.sink_mode:
            logger.warning("sink_mode=True: data sinking needs Ascend; on this backend steps run one at a time")
        ms.set_seed(args.seed)
        data = self._dataset(self._train_source, "train_dataset")
        if data is None:
            raise ValueError("no training data: pass train_dataset= (a JSON/JSONL/text file, records or a dataset)")
        eval_data = self._dataset(self._eval_source, "eval_dataset")
        self._match_padding(model, data)
        self._check_parallel(model)  # first: tensor parallelism changes how many data shards there are
        size = None if hasattr(data, "get_dataset_size") else len(data)  # a MindSpore dataset batches itself
        if size is not None and args.batch_size * self._data_world > size:
            raise ValueError(f"batch_size={args.batch_size} x {self._data_world} process(es) is larger than the training "
                             f"data ({size} examples after tokenization); use a batch_size of at most "
                             f"{max(1, size // self._data_world)} or more data")
        micro_per_epoch = self._num_batches(data, args.batch_size)
        if micro_per_epoch == 0:
            raise ValueError(f"the training data gives no batch of {args.batch_size} (x {self._data_world} processes)")
        steps_per_epoch = max(1, math.ceil(micro_per_epoch / args.gradient_accumulation_steps))
        max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
        recompute = self.recompute_config
        if args.recompute or recompute.recompute or recompute.select_recompute:
            self._apply_recompute(model, True if args.recompute else recompute.recompute, recompute.select_recompute)
            if args.mode == "jit" and ms.get_context("device_target") == "CPU":
                logger.warning("recompute with compiled steps on CPU: MindSpore's CPU kernels for broadcasts keep "
                               "large per-kernel buffers and recompute doubles them, so memory drops only when "
                               "feed-forward activations dominate (bench/recompute_memory.py: x0.60 there, x1.12 for "
                               "an attention-heavy shape); mode='pynative' saved memory in both")
        state = TrainerState(max_steps=max_steps, num_train_epochs=math.ceil(max_steps / steps_per_epoch),
                             output_dir=args.output_dir, is_main_process=self.rank == 0)
        checkpoint = resolve_resume(resume if resume is not None else args.resume_from_checkpoint, args.output_dir)
        if not checkpoint and not args.overwrite_output_dir and (earlier := earlier_run_files(args.output_dir)):
            raise FileExistsError(f"output_dir {args.output_dir} holds an earlier run's {earlier}; resume it "
                                  "(resume_from_checkpoint=True / --resume_training True), pick another output_dir, "
                                  "or set overwrite_output_dir=True")
        if self.rank == 0:
            remove_stale_temporaries(args.output_dir)
        # callbacks that choose the trainable parameters (LISA) do so for the first step before the optimizer
        # exists; a set that starts at that step has fresh moments, so a checkpoint's moments are not loaded
        state.global_step = checkpoint_step(checkpoint) if checkpoint else 0
        fresh_set = self.callbacks.on_step_begin(state, model)
        optimizer = build_optimizer(model, args)
        if checkpoint:
            state = load_checkpoint(checkpoint, model, None if fresh_set else optimizer, self._tensor_parallel)
            state.max_steps, state.start_step, state.start_time = max_steps, state.global_step, time.time()
            state.is_main_process = self.rank == 0
            logger.info("resuming from %s at step %d", checkpoint, state.global_step)
        self._untouched = None
        world = 1 if self._sharded else self.world_size
        steps = _StepFunctions(model, optimizer, args, world, self._tensor_parallel)
        set_graphs = graphs_released_after(keep="evaluate_batch")  # the graphs of this trainable set
        set_graphs.__enter__()  # pylint: disable=unnecessary-dunder-call
        model.set_train(True)
        self.callbacks.on_train_begin(state, args)
        epoch = state.global_step // steps_per_epoch
        skip = (state.global_step % steps_per_epoch) * args.gradient_accumulation_steps
        window = {"loss": [], "aux": [], "tokens": 0, "steps": 0, "start": time.time(), "reports_aux": steps.reports_aux}
        while state.global_step < max_steps:
            accumulated, micro, loss_sum, tokens = None, 0, 0.0, 0
            for index, batch in enumerate(self._batches(data, args.batch_size, True, epoch, skip, model=model),
                                          start=skip):
                ids, mask, labels = (Tensor(batch[k]) for k in ("input_ids", "attention_mask", "labels"))
                if micro == 0 and self.callbacks.on_step_begin(state, model):
                    # a new trainable set (LISA): a new optimizer over it (the old moments are released with the
                    # old one) and new compiled steps (the gradients are taken for other parameters)
                    set_graphs.__exit__(None, None, None)
                    optimizer = steps = None
                    optimizer = build_optimizer(model, args)
                    steps = _StepFunctions(model, optimizer, args, world, self._tensor_parallel)
                    set_graphs = graphs_released_after(keep="evaluate_batch")
                    set_graphs.__enter__()  # pylint: disable=unnecessary-dunder-call
                if micro == 0:  # the schedule is a function of the optimizer step
                    factor = schedule_factor(state.global_step, max_steps, args)
                    constants = optimizer.step_constants()
                    lr, lr_factor = optimizer.peak_lrs[0] * factor, Tensor(factor, ms.float32)
                micro += 1
                window["tokens"] += int(batch["attention_mask"].sum())
                scored = self._scored_tokens(batch["labels"])
                if args.gradient_accumulation_steps == 1:
                    loss, norm, aux = steps.step(ids, mask, labels, Tensor([scored], ms.float32), lr_factor,
                                                 constants)
                    window["aux"].append(float(aux.asnumpy()))
                else:
                    (loss, aux), grads = steps.gradients(ids, mask, labels)
                    window["aux"].append(float(aux.asnumpy()))
                    grads = tuple(g * scored for g in grads)
                    accumulated = grads if accumulated is None else tuple(a + g for a, g in zip(accumulated, grads))
                    loss_sum += float(loss.asnumpy()) * scored
                    tokens += scored
                    if micro < args.gradient_accumulation_steps and index < micro_per_epoch - 1:
                        continue
                    loss, norm = steps.update(accumulated, Tensor([loss_sum], ms.float32), Tensor([tokens], ms.float32),
                                              lr_factor, constants)
                window["loss"].append(float(loss.asnumpy()[0]))
                self._after_step(optimizer, state, window, lr, float(norm.asnumpy()), epoch, steps_per_epoch,
                                 model, eval_data)
                accumulated, micro, loss_sum, tokens = None, 0, 0.0, 0
                if state.global_step >= max_steps:
                    break
            skip = 0
            epoch += 1
        set_graphs.__exit__(None, None, None)
        model.set_train(False)
        self._save(model, optimizer, state)
        if eval_data is not None and args.eval_steps is None:
            self._log_eval(model, eval_data, state)
        self.callbacks.on_train_end(state)
        return state

    def _after_step(self, optimizer, state, window, lr, norm, epoch, steps_per_epoch, model, eval_data):
        """Count the step; log, evaluate and checkpoint when their intervals come round."""
        args = self.args
        tuner = tuner_of(model)
        if tuner is not None:  # the step's gradients to the tuner methods' hooks (PEFT's update_and_allocate(step))
            tuner.after_optimizer_step(state.global_step)
        state.global_step += 1
        window["steps"] += 1
        state.epoch = epoch + (state.global_step - epoch * steps_per_epoch) / steps_per_epoch
        logs: Dict[str, Any] = {}
        if state.global_step % args.logging_steps == 0 or state.global_step == state.max_steps:
            elapsed = time.time() - window["start"]
            state.tokens_seen += window["tokens"]
            logs = {"loss": float(np.mean(window["loss"])), "lr": lr, "grad_norm": norm,
                    "tokens_per_second": window["tokens"] / max(elapsed, 1e-9), "step_time": elapsed / window["steps"]}
            if window["reports_aux"]:  # the MoE load-balancing loss (inside "loss", times its coefficient)
                logs["aux_loss"] = float(np.mean(window["aux"]))
            state.log_history.append({"step": state.global_step, "epoch": round(state.epoch, 4), **logs})
            window.update(loss=[], aux=[], tokens=0, steps=0, start=time.time())
        self.callbacks.on_step_end(state, logs)
        if eval_data is not None and args.eval_steps and state.global_step % args.eval_steps == 0:
            self._log_eval(model, eval_data, state)
            model.set_train(True)
        if args.save_steps and state.global_step % args.save_steps == 0 and state.global_step < state.max_steps:
            self._save(model, optimizer, state)

    def _scored_tokens(self, labels: np.ndarray) -> int:
        """How many labels of a batch the loss averages over."""
        if self.model_task == "causal_lm":
            return int((labels[:, 1:] != -100).sum())  # the first position predicts nothing
        return int((labels != -100).sum())

    def _match_padding(self, model, data) -> None:
        """A classifier pools each row's last non-padding token, so it must know the data's padding id."""
        pad = getattr(data, "pad_token_id", None)
        if self.model_task == "sequence_classification" and pad is not None and model.config.pad_token_id != pad:
            logger.info("setting the classifier's pad_token_id to the data's padding id %d", pad)
            model.config.pad_token_id = int(pad)

    def _save(self, model, optimizer, state: TrainerState) -> None:
        weights = moments = None
        if self._tensor_parallel is not None:  # whole tensors, gathered by every rank of the group
            split = self._tensor_parallel.model  # the base model under a tuner: paths as the split layout has them
            weights = self._tensor_parallel.gather({n: p.asnumpy() for n, p in split.parameters_and_names()})
            moments = self._tensor_parallel.gather({n: p.asnumpy() for n, p in optimizer.state_parameters().items()})
        if not state.is_main_process:
            return
        path = save_checkpoint(self.args.output_dir, model, optimizer, state, self.args, weights, moments)
        rotate_checkpoints(self.args.output_dir, self.args.save_total_limit, keep=path)
        self.callbacks.on_save(state, path)

    def _log_eval(self, model, data, state: TrainerState) -> Dict[str, float]:
        metrics = self._evaluate(model, data)
        state.log_history.append({"step": state.global_step, **metrics})
        if state.best_metric is None or metrics["eval_loss"] < state.best_metric:
            state.best_metric = metrics["eval_loss"]
        self.callbacks.on_evaluate(state, metrics)
        return metrics

    def _evaluate(self, model, data) -> Dict[str, float]:
        """Token-weighted loss over the data (and accuracy for classification), summed over ranks."""
        model.set_train(False)
        total_loss, weight, correct, count, aux_sum, batches = 0.0, 0, 0, 0, 0.0, 0
        evaluate_batch = self._eval_step(model)
        aux_settings = model.config.aux_loss_settings() if self.model_task == "causal_lm" else None
        for batch in self._batches(data, self.args.eval_batch_size, False, 0, model=model):
            ids, mask, labels = (Tensor(batch[k]) for k in ("input_ids", "attention_mask", "labels"))
            with graphs_compiled(self._eval_graphs):
                loss, other = evaluate_batch(ids, mask, labels)
            tokens = self._scored_tokens(batch["labels"])
            if self.model_task != "causal_lm":
                scored = batch["labels"] != -100
                correct += int((other.asnumpy()[scored] == batch["labels"][scored]).sum())
                count += int(scored.sum())
            elif aux_settings is not None:  # the loss holds coefficient * aux; perplexity is of the rest
                aux = float(other.asnumpy())
                aux_sum, batches = aux_sum + aux, batches + 1
                total_loss -= aux_settings[0] * aux * tokens
            total_loss += float(loss.asnumpy()) * tokens
            weight += tokens
        if self._data_world > 1:  # sums over the data shards (tensor-parallel ranks share theirs)
            tp = self._tensor_parallel
            reduce = ops.AllReduce() if tp is None else ops.AllReduce(group=tp.dp_group)
            sums = reduce(Tensor(np.array([total_loss, weight, correct, count, aux_sum, batches],
                                          np.float32))).asnumpy()
            total_loss, weight, correct, count = float(sums[0]), int(sums[1]), int(sums[2]), int(sums[3])
            aux_sum, batches = float(sums[4]), int(sums[5])
        if weight == 0:
            raise ValueError("the evaluation data holds no tokens to score")
        loss = total_loss / weight
        metrics = {"eval_loss": loss}
        if self.model_task == "causal_lm":
            metrics["eval_perplexity"] = float(math.exp(min(loss, 50.0)))
            if aux_settings is not None:
                metrics["eval_aux_loss"] = aux_sum / max(batches, 1)
        else:
            metrics["eval_accuracy"] = correct / max(count, 1)
        return metrics

    def _eval_step(self, model):
        """``(input_ids, attention_mask, labels) -> (mean loss, predicted classes, or the MoE load-balancing
        loss, or the loss)``, compiled once per model in jit mode (only these leave the graph, not the logits)."""
        if self._eval_for is not model:
            release_graphs(self._eval_graphs)  # another model's
            self._eval_graphs.clear()
            classify = self.model_task != "causal_lm"
            reports_aux = not classify and model.config.aux_loss_settings() is not None

            def evaluate_batch(input_ids, attention_mask, labels):
                out = model(input_ids, attention_mask, None, labels)
                loss, logits = out[0], out[1]
                if classify:
                    return loss, logits.argmax(-1)
                return loss, (out[2] if reports_aux else loss)

            self._eval_compiled = ms.jit(evaluate_batch) if self.args.mode == "jit" else evaluate_batch
            self._eval_for = model
        return self._eval_compiled

    @staticmethod
    def _apply_recompute(model, layers: Any = True, select: Any = False) -> None:
        """Mark decoder layers for recomputation in the backward pass (compiled steps): all of them
        (``layers`` True), the first n (``[n]``, MindFormers' per-stage counts, one stage here), and with
        ``select`` the feed-forward block of every other layer (MindFormers' select_recompute: the MLP
        product and SiLU)."""
        from mindspore import nn

        tuner = tuner_of(model)
        base = tuner.base_model if tuner is not None else model
        stacks = [c for _, c in base.cells_and_names() if isinstance(c, nn.CellList)]
        if not stacks:
            raise ValueError(f"{type(base).__name__} has no layer list to recompute")
        count = len(stacks[0]) if layers is True else (0 if layers is False else int(sum(layers[:1])))
        for i, layer in enumerate(stacks[0]):
            if i < count:
                layer.recompute()
            elif select and getattr(layer, "mlp", None) is not None:
                layer.mlp.recompute()
