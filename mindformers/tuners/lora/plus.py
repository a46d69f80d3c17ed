"""LoRA+ (Hayou et al. 2024): B matrices learn ``loraplus_lr_ratio`` times faster than A matrices.

Groups follow PEFT's ``create_loraplus_optimizer``: ``groupA`` (lr: A factors and other trainable matrices),
``embedding`` (loraplus_lr_embedding: the factors of adapted embeddings), ``groupB`` (lr * ratio: B factors
and 1-D parameters such as DoRA magnitudes) and ``groupB_no_decay`` (lr * ratio, no weight decay: biases
and norm parameters).
"""
from typing import Any, Dict, List

from ...models.common.layers import LayerNorm, RMSNorm
from .layer import LoraEmbedding


def create_optimizer_param_groups(model, lr: float, loraplus_lr_ratio: float, loraplus_lr_embedding: float = 1e-6,
                                  weight_decay: float = 0.0) -> List[Dict[str, Any]]:
    """Parameter groups for a MindSpore optimizer (``nn.AdamWeightDecay(groups, ...)``).

    Args:
        model: a model with LoRA adapters (a TunerModel or a model with injected adapters).
        lr: learning rate of the A factors.
        loraplus_lr_ratio: lr of B factors / lr of A factors (the paper suggests 2 to 16).
        loraplus_lr_embedding: learning rate of embedding adapters.
        weight_decay: weight decay of every group but ``groupB_no_decay``.
    Returns:
        Non-empty groups ``{"params", "lr", "weight_decay", "name"}``; only trainable parameters appear.
    """
    from ..peft import _tuner_of

    if loraplus_lr_ratio <= 0:
        raise ValueError(f"loraplus_lr_ratio must be > 0, found {loraplus_lr_ratio}")
    base = _tuner_of(model).base_model
    cells = dict(base.cells_and_names())
    norm_params = {f"{n}.{p}" for n, c in cells.items() if isinstance(c, (LayerNorm, RMSNorm))
                   for p, _ in c.parameters_and_names(expand=False)}
    groups = {"groupA": [], "embedding": [], "groupB": [], "groupB_no_decay": []}
    for path, param in base.parameters_and_names():
        if not param.requires_grad:
            continue
        owner = path.split(".lora_embedding_")[0]
        if ".lora_embedding_" in path and isinstance(cells.get(owner), LoraEmbedding):
            groups["embedding"].append(param)
        elif ".lora_B." in path or len(param.shape) == 1:
            no_decay = "bias" in path.rsplit(".", 1)[-1] or path in norm_params
            groups["groupB_no_decay" if no_decay else "groupB"].append(param)
        else:
            groups["groupA"].append(param)
    settings = {"groupA": (lr, weight_decay), "embedding": (loraplus_lr_embedding, weight_decay),
                "groupB": (lr * loraplus_lr_ratio, weight_decay), "groupB_no_decay": (lr * loraplus_lr_ratio, 0.0)}
    return [{"name": name, "params": params, "lr": settings[name][0], "weight_decay": settings[name][1]}
            for name, params in groups.items() if params]
