"""TrainingArguments: every setting of a training run, readable from and writable to YAML.

Names follow Hugging Face's ``TrainingArguments`` where one exists; MindFormers' spellings (``epochs``,
``per_device_train_batch_size`` is HF's, ``batch_size`` MindFormers') are accepted too. In a run YAML they
form the ``training:`` section (see configs/).
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

import yaml

from ..fields import as_path, check_field_types
from ..utils import atomic_write_text

ALIASES = {
    "epochs": "num_train_epochs",
    "per_device_train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "lr": "learning_rate",
    "seq_len": "seq_length",
    "max_seq_length": "seq_length",
    "lr_schedule": "lr_scheduler_type",
}
SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup")
OPTIMIZERS = ("adamw", "sgd", "galore_adamw")
MODES = ("jit", "pynative")


@dataclass
class TrainingArguments:
    """Settings of a run (see each field's docstring)."""

    output_dir: str = "./output"
    """Checkpoints, metrics.jsonl, tensorboard/ and loss_curve.png go here."""
    overwrite_output_dir: bool = False
    """Let a new (not resumed) run write into an output_dir holding an earlier run's checkpoints or logs."""
    num_train_epochs: float = 1
    """Passes over the training data (ignored when max_steps > 0)."""
    max_steps: int = -1
    """Optimizer steps to take; > 0 overrides num_train_epochs."""
    batch_size: int = 8
    """Examples per step on each process (MindFormers: batch_size; HF: per_device_train_batch_size)."""
    eval_batch_size: Optional[int] = None
    """Examples per evaluation step; None uses batch_size."""
    gradient_accumulation_steps: int = 1
    """Micro-batches whose gradients are summed before one optimizer step."""
    learning_rate: float = 5e-5
    """Peak learning rate."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW); biases and norm weights are exempt."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    optim: str = "adamw"
    """Optimizer: "adamw", "sgd" or "galore_adamw" (AdamW with GaLore's projected moments on the 2-D weights of
    ``optim_target_modules``, settings in ``optim_args``; mindformers/tuners/galore)."""
    optim_target_modules: Optional[Union[str, List[str]]] = None
    """GaLore (HF's name): module path substrings (a list) or one regular expression (a string) whose Linear
    weights GaLore projects; "all-linear" takes every Linear layer but the output head."""
    optim_args: Optional[str] = None
    """GaLore settings in HF's spelling: "rank=128, update_proj_gap=50, scale=1.0, proj_type=std"."""
    lisa_activated_layers: int = 0
    """LISA (SWIFT's name): train this many decoder layers, sampled anew every lisa_step_interval steps, with
    the embeddings, final norm and head (0: off). Full fine-tuning only (mindformers/tuners/lisa)."""
    lisa_step_interval: int = 20
    """LISA: optimizer steps between two samplings of the trained layers."""
    lr_scheduler_type: str = "linear"
    """Learning-rate schedule after warmup: linear, cosine, constant, constant_with_warmup."""
    warmup_steps: int = 0
    """Linear warmup steps (overrides warmup_ratio when > 0)."""
    warmup_ratio: float = 0.0
    """Warmup as a fraction of max_steps."""
    max_grad_norm: Optional[float] = 1.0
    """Clip the global gradient norm to this (None or 0 disables)."""
    loraplus_lr_ratio: Optional[float] = None
    """LoRA+: learning rate of LoRA B matrices / A matrices (None: plain groups)."""
    seq_length: int = 512
    """Longest training sequence in tokens (longer records are truncated; text is packed to it)."""
    pad_to_multiple_of: Optional[int] = None
    """Pad each batch's length to a multiple of this; None pads every batch to seq_length. Every distinct
    batch shape compiles its own training graph (about a minute and several GB on CPU for a 135M model),
    so the default keeps one shape; a partial last batch is filled with rows that carry no labels."""
    logging_steps: int = 10
    """Log loss, learning rate and throughput every this many steps."""
    eval_steps: Optional[int] = None
    """Evaluate every this many steps (None: only at the end of training, when there is eval data)."""
    save_steps: Optional[int] = 500
    """Checkpoint every this many steps (None or 0: only at the end)."""
    save_total_limit: Optional[int] = None
    """Keep at most this many step checkpoints (oldest deleted first)."""
    seed: int = 42
    """Seed of data order, dropout and adapter initialisation."""
    resume_from_checkpoint: Optional[Union[str, bool]] = None
    """A checkpoint directory to continue from, or True for the latest one in output_dir."""
    sink_mode: bool = False
    """MindFormers' data sinking (Ascend); on CPU steps run one by one and this only warns."""
    mode: str = "jit"
    """How a training step runs: "jit" (compiled once per shape) or "pynative" (eager, for debugging)."""
    recompute: bool = False
    """Recompute each decoder layer's activations in the backward pass (less memory, more time)."""
    dataloader_drop_last: bool = False
    """Drop the last incomplete batch of each epoch."""
    report_to: Union[List[str], str] = field(default_factory=lambda: ["jsonl", "tensorboard", "png"])
    """Run records to write: "jsonl" (metrics.jsonl), "tensorboard", "png" (loss_curve.png); "all" or "none"."""
    disable_tqdm: bool = False
    """No progress bar."""

    def __post_init__(self):
        def check(ok, message):
            if not ok:
                raise ValueError(f"TrainingArguments: {message}")

        self.output_dir, self.resume_from_checkpoint = as_path(self.output_dir), as_path(self.resume_from_checkpoint)
        check_field_types(type(self), self.__dict__, "TrainingArguments")
        check(isinstance(self.batch_size, int) and self.batch_size > 0, f"batch_size must be a positive integer, found {self.batch_size!r}")
        check(self.gradient_accumulation_steps >= 1, f"gradient_accumulation_steps must be >= 1, found {self.gradient_accumulation_steps}")
        check(self.learning_rate >= 0, f"learning_rate must be >= 0, found {self.learning_rate}")
        check(self.lr_scheduler_type in SCHEDULES, f"lr_scheduler_type must be one of {SCHEDULES}, found {self.lr_scheduler_type!r}")
        check(self.optim in OPTIMIZERS, f"optim must be one of {OPTIMIZERS}, found {self.optim!r}")
        check(self.lisa_activated_layers >= 0, f"lisa_activated_layers must be >= 0, found {self.lisa_activated_layers}")
        check(self.lisa_step_interval >= 1, f"lisa_step_interval must be >= 1, found {self.lisa_step_interval}")
        check(self.optim == "galore_adamw" or (self.optim_target_modules is None and not self.optim_args),
              f"optim_target_modules and optim_args configure optim='galore_adamw', found optim={self.optim!r}")
        check(self.mode in MODES, f"mode must be one of {MODES}, found {self.mode!r}")
        check(0.0 <= self.warmup_ratio < 1.0, f"warmup_ratio must be in [0, 1), found {self.warmup_ratio}")
        check(self.max_steps > 0 or self.num_train_epochs > 0, "set max_steps > 0 or num_train_epochs > 0")
        check(self.logging_steps > 0, f"logging_steps must be > 0, found {self.logging_steps}")
        check(self.save_total_limit is None or self.save_total_limit > 0,
              f"save_total_limit must be None or > 0, found {self.save_total_limit}")
        if isinstance(self.report_to, str):  # transformers' spellings: one name, "all" or "none"
            self.report_to = {"none": [], "all": ["jsonl", "tensorboard", "png"]}.get(self.report_to, [self.report_to])
        unknown = sorted(set(self.report_to) - {"jsonl", "tensorboard", "png"})
        check(not unknown, f"report_to entries must be jsonl, tensorboard or png, found {unknown}")
        if self.eval_batch_size is None:
            self.eval_batch_size = self.batch_size

    # ------------------------------------------------------------------ dicts and YAML
    @classmethod
    def from_dict(cls, data: Dict[str, Any], where: str = "training arguments") -> "TrainingArguments":
        """Build from a dict in HF or MindFormers spelling; unknown keys are an error listing the valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        out, unknown = {}, []
        for key, value in data.items():
            name = ALIASES.get(key, key)
            if name in valid:
                out[name] = value
            else:
                unknown.append(key)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys: {', '.join(valid)}")
        return cls(**out)

    @classmethod
    def from_yaml(cls, path: str) -> "TrainingArguments":
        """The ``training:`` section of a run YAML (or a YAML holding only these fields)."""
        from ..presets import load_yaml

        data = load_yaml(path)
        return cls.from_dict(data.get("training", data) or {}, path)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str) -> None:
        """Write ``training: {...}`` to ``path`` atomically."""
        atomic_write_text(path, yaml.safe_dump({"training": self.to_dict()}, sort_keys=False))

    def replace(self, **changes: Any) -> "TrainingArguments":
        return self.from_dict({**self.to_dict(), **changes})
