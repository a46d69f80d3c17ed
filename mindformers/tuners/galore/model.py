"""Choosing GaLore's weights in a model and building the run's optimizer (``optim="galore_adamw"``)."""
from typing import List

from mindspore import nn

from ...models.common.layers import Linear
from ...trainer.optim import parameter_groups
from .config import GaLoreConfig
from .optimizer import GaLoreAdamW


def galore_targets(model: nn.Cell, config: GaLoreConfig) -> List[str]:
    """Parameter paths of the trainable weights of the Linear layers ``config`` targets."""
    names = {id(p): n for n, p in model.parameters_and_names()}
    found = [names[id(cell.weight)] for path, cell in model.cells_and_names()
             if isinstance(cell, Linear) and config.matches(path) and cell.weight.requires_grad]
    if not found:
        linears = [path for path, cell in model.cells_and_names() if isinstance(cell, Linear)]
        raise ValueError(f"GaLore target_modules {config.target_modules!r} match no trainable Linear layer of "
                         f"{type(model).__name__}; its Linear layers are e.g. {linears[:4]}")
    return list(dict.fromkeys(found))  # tied weights once


def build_galore_optimizer(model: nn.Cell, args) -> GaLoreAdamW:
    """GaLore-AdamW over the model's trainable parameters, configured by TrainingArguments (HF's names:
    ``optim_target_modules``, ``optim_args``; Adam's betas, eps and weight decay as for AdamW)."""
    if args.loraplus_lr_ratio:
        raise ValueError("optim='galore_adamw' and loraplus_lr_ratio both set the parameter groups; use one")
    config = GaLoreConfig.from_training_args(args)
    targets = set(galore_targets(model, config))
    weights = [p for n, p in model.parameters_and_names() if n in targets]
    rest = []
    for group in parameter_groups(model, args):
        params = [p for p in group["params"] if all(p is not w for w in weights)]
        if params:
            rest.append({**group, "params": params})
    galore = {"params": weights, "lr": args.learning_rate, "weight_decay": args.weight_decay}
    return GaLoreAdamW(galore, rest, config, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
