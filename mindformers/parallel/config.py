"""How a model is split across devices: ``ParallelConfig`` and ``RecomputeConfig`` (MindFormers' YAML sections
``parallel_config:`` and ``recompute_config:``, and the arguments of ``Trainer.set_parallel_config`` /
``set_recompute_config``), checked against the model before MindSpore sees anything.

The world is ``data_parallel x model_parallel x pipeline_stage`` devices. ``model_parallel`` splits attention
heads, feed-forward widths and (unless ``vocab_emb_dp``) the vocabulary; ``expert_parallel`` spreads MoE
experts over the data-parallel groups; ``pipeline_stage`` cuts the layers into consecutive stages that run
``micro_batch_num`` micro-batches in flight; ``optimizer_shard`` splits optimizer states (and the update)
over the data-parallel copies (ZeRO-1, MindSpore's ``enable_parallel_optimizer``).
"""
import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union


@dataclass
class ParallelConfig:
    """MindFormers' ``parallel_config`` (the split of one model over ``device_num`` devices)."""

    data_parallel: int = 1
    """Copies of the model, each on its own slice of every batch."""
    model_parallel: int = 1
    """Devices a layer's heads and widths are split over (tensor parallelism)."""
    pipeline_stage: int = 1
    """Consecutive groups of layers, one per group of devices."""
    micro_batch_num: int = 1
    """Micro-batches a batch is cut into so pipeline stages overlap (>= pipeline_stage)."""
    expert_parallel: int = 1
    """Devices the experts of an MoE layer are spread over (divides data_parallel and the experts)."""
    vocab_emb_dp: bool = True
    """Keep the embedding and output head whole on every device (False: split the vocabulary by model_parallel)."""
    use_seq_parallel: bool = False
    """Split norms and residual activations along the sequence by model_parallel (Korthikanti et al. 2022)."""
    gradient_aggregation_group: int = 4
    """Gradients fused per all-reduce (a communication detail; any value >= 1)."""
    optimizer_shard: bool = False
    """Split optimizer states and the update over the data-parallel copies (ZeRO-1)."""

    def __post_init__(self):
        for name in ("data_parallel", "model_parallel", "pipeline_stage", "micro_batch_num", "expert_parallel",
                     "gradient_aggregation_group"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"parallel_config.{name} must be an integer >= 1, found {value!r}")
        if self.micro_batch_num < self.pipeline_stage:
            raise ValueError(f"parallel_config.micro_batch_num ({self.micro_batch_num}) must be >= pipeline_stage "
                             f"({self.pipeline_stage}): every stage needs a micro-batch in flight")
        if self.data_parallel % self.expert_parallel:
            raise ValueError(f"parallel_config.expert_parallel ({self.expert_parallel}) must divide data_parallel "
                             f"({self.data_parallel}): experts are spread over the data-parallel copies")

    @property
    def device_num(self) -> int:
        """Devices the split needs: data_parallel x model_parallel x pipeline_stage."""
        return self.data_parallel * self.model_parallel * self.pipeline_stage

    @property
    def is_split(self) -> bool:
        """Whether anything but data parallelism is asked for."""
        return self.model_parallel > 1 or self.pipeline_stage > 1 or self.expert_parallel > 1 or self.optimizer_shard

    @classmethod
    def from_dict(cls, data: Optional[Dict[str, Any]], where: str = "parallel_config") -> "ParallelConfig":
        return _from_dict(cls, data, where, aliases={"enable_parallel_optimizer": "optimizer_shard",
                                                     "expert_model_parallel": "expert_parallel"})

    def check(self, config, device_num: Optional[int] = None, batch_size: Optional[int] = None,
              seq_length: Optional[int] = None) -> None:
        """Raise ``ValueError`` naming the field when this split cannot hold ``config`` (a model config).

        Args:
            device_num: devices available (None: not checked).
            batch_size: global batch (rows per step over all data-parallel copies; None: not checked).
            seq_length: tokens per row (for ``use_seq_parallel``).
        """
        mp, where = self.model_parallel, f"parallel_config for {type(config).__name__}"
        if device_num is not None and device_num != self.device_num:
            raise ValueError(f"{where}: data_parallel x model_parallel x pipeline_stage = {self.data_parallel} x "
                             f"{mp} x {self.pipeline_stage} = {self.device_num} devices, but {device_num} are there")
        for field, value in _split_dims(config):
            if value % mp:
                raise ValueError(f"{where}: model_parallel ({mp}) must divide {field} ({value})")
        if not self.vocab_emb_dp and config.vocab_size % mp:
            raise ValueError(f"{where}: model_parallel ({mp}) must divide vocab_size ({config.vocab_size}) when "
                             "vocab_emb_dp is false (the vocabulary is split); pad the vocabulary or set "
                             "vocab_emb_dp: true")
        layers = config.num_hidden_layers
        if self.pipeline_stage > layers:
            raise ValueError(f"{where}: pipeline_stage ({self.pipeline_stage}) is more than the {layers} layers "
                             "(num_layers)")
        experts = _num_experts(config)
        if self.expert_parallel > 1:
            if experts is None:
                raise ValueError(f"{where}: expert_parallel ({self.expert_parallel}) needs an MoE model; "
                                 f"{type(config).__name__} has no experts")
            if experts % self.expert_parallel:
                raise ValueError(f"{where}: expert_parallel ({self.expert_parallel}) must divide the number of "
                                 f"experts ({experts})")
        if batch_size is not None and batch_size % (self.data_parallel * self.micro_batch_num):
            raise ValueError(f"{where}: the global batch ({batch_size}) must be a multiple of data_parallel x "
                             f"micro_batch_num ({self.data_parallel} x {self.micro_batch_num})")
        if self.use_seq_parallel and seq_length is not None and seq_length % mp:
            raise ValueError(f"{where}: use_seq_parallel splits the sequence: model_parallel ({mp}) must divide "
                             f"seq_length ({seq_length})")



ROUTES = ("stand_alone", "data_parallel", "tensor_parallel", "semi_auto_parallel")


def route(parallel: ParallelConfig, world_size: int, device_target: str, parallel_mode: str) -> str:
    """How a run applies ``parallel``: the one place that decides.

    - one process: ``stand_alone`` (the split takes no effect, as MindFormers documents);
    - CPU under msrun: ``tensor_parallel`` when model_parallel > 1 (explicit collectives,
      :mod:`mindformers.parallel.tensor_parallel`), else ``data_parallel``; pipeline stages, expert parallel
      and optimizer shard need semi-automatic parallelism, which MindSpore refuses on CPU;
    - Ascend/GPU with ``parallel_mode`` semi_auto_parallel / auto_parallel: ``semi_auto_parallel`` (strategies
      set by :func:`mindformers.parallel.shard.apply_strategies`); with ``data_parallel`` mode a split is refused.

    Raises:
        ValueError / NotImplementedError naming the setting to change.
    """
    if world_size == 1:
        return "stand_alone"
    if device_target == "CPU":
        if parallel.pipeline_stage > 1 or parallel.expert_parallel > 1 or parallel.optimizer_shard:
            raise NotImplementedError(
                "pipeline_stage/expert_parallel/optimizer_shard under msrun need semi_auto_parallel on Ascend/GPU; "
                f"on CPU {world_size} processes run data and tensor (model_parallel) parallelism")
        if world_size % parallel.model_parallel:
            raise ValueError(f"parallel_config.model_parallel ({parallel.model_parallel}) must divide the "
                             f"{world_size} processes msrun started")
        if parallel.data_parallel not in (1, world_size // parallel.model_parallel):
            raise ValueError(f"parallel_config.data_parallel={parallel.data_parallel} x model_parallel="
                             f"{parallel.model_parallel} but {world_size} process(es) run; start the script with "
                             f"msrun --worker_num={parallel.data_parallel * parallel.model_parallel}")
        return "tensor_parallel" if parallel.model_parallel > 1 else "data_parallel"
    if parallel_mode in ("semi_auto_parallel", "auto_parallel"):
        if parallel.device_num != world_size:
            raise ValueError(f"parallel_config needs data_parallel x model_parallel x pipeline_stage = "
                             f"{parallel.device_num} devices, but {world_size} processes run")
        return "semi_auto_parallel"
    if parallel.is_split:
        raise ValueError(f"parallel_config splits the model but parallel_mode is {parallel_mode!r}; set "
                         "parallel.parallel_mode: semi_auto_parallel to split it on Ascend/GPU")
    return "data_parallel"


@dataclass
class RecomputeConfig:
    """MindFormers' ``recompute_config``: which activations are recomputed in the backward pass."""

    recompute: Union[bool, List[int]] = False
    """Recompute every decoder layer (True), or the first n layers of each pipeline stage ([n, ...])."""
    select_recompute: Union[bool, List[str]] = False
    """Recompute only the cheap, large activations (the feed-forward product and SiLU; or name patterns)."""
    select_comm_recompute: bool = False
    """Recompute the outputs of communication ops (model-parallel gathers) instead of keeping them."""
    mp_comm_recompute: bool = True
    """Recompute model-parallel communication in the backward pass."""
    parallel_optimizer_comm_recompute: bool = False
    """Recompute the optimizer-shard all-gathers."""
    recompute_slice_activation: bool = False
    """Keep recomputed layers' inputs sliced by model_parallel."""

    def __post_init__(self):
        if not isinstance(self.recompute, (bool, list)) or (isinstance(self.recompute, list) and not all(
                isinstance(n, int) and n >= 0 for n in self.recompute)):
            raise ValueError(f"recompute_config.recompute must be true/false or a list of layer counts per stage, "
                             f"found {self.recompute!r}")
        if not isinstance(self.select_recompute, (bool, list)):
            raise ValueError(f"recompute_config.select_recompute must be true/false or a list of name patterns, "
                             f"found {self.select_recompute!r}")

    @classmethod
    def from_dict(cls, data: Optional[Dict[str, Any]], where: str = "recompute_config") -> "RecomputeConfig":
        return _from_dict(cls, data, where)

    def layers_recomputed(self, layers: int, pipeline_stage: int = 1) -> int:
        """How many of ``layers`` decoder layers recompute in full."""
        if isinstance(self.recompute, bool):
            return layers if self.recompute else 0
        per_stage = -(-layers // pipeline_stage)
        return sum(min(n, per_stage) for n in self.recompute[:pipeline_stage])


def _from_dict(cls, data, where: str, aliases: Optional[Dict[str, str]] = None):
    if data is None:
        return cls()
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise TypeError(f"{where} must be a mapping or a {cls.__name__}, found {type(data).__name__}")
    aliases = aliases or {}
    data = {aliases.get(k, k): v for k, v in data.items()}
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(valid | set(aliases))}")
    return cls(**data)


def _num_experts(config) -> Optional[int]:
    spec = getattr(config, "moe_spec", None)
    return spec().num_experts if spec is not None else None


def _split_dims(config):
    """(field, size) of every dimension model_parallel splits in ``config``'s layers."""
    dims = [("num_attention_heads", config.num_attention_heads), ("hidden_size", config.hidden_size)]
    kv = getattr(config, "num_key_value_heads", None)
    if kv is not None and getattr(config, "attention_class", "Attention") == "Attention":
        dims.append(("num_key_value_heads", kv))
    width = getattr(config, "intermediate_size", None)
    if width:
        dims.append(("intermediate_size (ffn_hidden_size)", width))
    moe = getattr(config, "moe_spec", None)
    if moe is not None:
        spec = moe()
        dims.append(("the experts' intermediate size (moe_intermediate_size)", spec.intermediate_size))
        if spec.shared_intermediate_size:
            dims.append(("the shared experts' width", spec.shared_intermediate_size))
    return dims
