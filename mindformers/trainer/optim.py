"""Optimizer and learning-rate schedule of a run.

The optimizer is MindSpore's ``experimental.optim`` AdamW/SGD (``mint.optim.AdamW`` has no CPU kernel in
2.10). Each parameter group keeps its learning rate in a Parameter, which the trainer sets before every
step to ``group base lr * schedule(step)``: the schedule is a plain function of the step, so a resumed run
gets the same rates without any scheduler state.
"""
import math
from typing import List, Tuple

import mindspore as ms
from mindspore import Tensor
from mindspore.experimental.optim import SGD, AdamW

from .args import TrainingArguments


def schedule_factor(step: int, max_steps: int, args: TrainingArguments) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    warmup = args.warmup_steps if args.warmup_steps > 0 else int(math.ceil(args.warmup_ratio * max_steps))
    if step < warmup:
        return (step + 1) / warmup  # HF starts warmup above zero only after the first step; we count it
    if args.lr_scheduler_type in ("constant", "constant_with_warmup"):
        return 1.0
    progress = (step - warmup) / max(1, max_steps - warmup)
    if args.lr_scheduler_type == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))  # cosine


def parameter_groups(model, args: TrainingArguments) -> List[dict]:
    """Trainable parameters in groups: LoRA+ groups when asked, else weight-decayed matrices and
    undecayed vectors (biases, norm weights)."""
    if args.loraplus_lr_ratio:
        from ..tuners import create_optimizer_param_groups

        groups = create_optimizer_param_groups(model, args.learning_rate, args.loraplus_lr_ratio,
                                               weight_decay=args.weight_decay)
        return [{"params": g["params"], "lr": g["lr"], "weight_decay": g["weight_decay"]} for g in groups]
    params = [p for p in model.trainable_params()]
    if not params:
        raise ValueError("the model has no trainable parameters (are all of them frozen?)")
    decay = [p for p in params if len(p.shape) > 1]
    no_decay = [p for p in params if len(p.shape) <= 1]
    groups = [{"params": decay, "lr": args.learning_rate, "weight_decay": args.weight_decay},
              {"params": no_decay, "lr": args.learning_rate, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model, args: TrainingArguments) -> Tuple[object, List[float]]:
    """The optimizer and each group's peak learning rate."""
    groups = parameter_groups(model, args)
    peaks = [g["lr"] for g in groups]
    if args.optim == "adamw":
        optimizer = AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                          eps=args.adam_epsilon, weight_decay=args.weight_decay)
    else:
        optimizer = SGD(groups, lr=args.learning_rate)
    return optimizer, peaks


def set_learning_rates(optimizer, peaks: List[float], factor: float) -> float:
    """Set every group's rate to peak * factor; return the first group's (for logging)."""
    for group, peak in zip(optimizer.param_groups, peaks):
        group["lr"].set_data(Tensor(peak * factor, ms.float32))
    return peaks[0] * factor


def optimizer_state(optimizer) -> dict:
    """The optimizer's own tensors (moments, step counters) by name, for checkpoints."""
    model_params = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return {name: param for name, param in optimizer.parameters_and_names() if id(param) not in model_params}
