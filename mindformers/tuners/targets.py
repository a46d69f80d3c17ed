"""Which modules a tuner config targets, as PEFT 0.21 decides (``check_target_module_exists``), for every method.

A list entry matches a module whose name equals it or ends with ``"." + entry``; a string is a regex that
must match the whole name; ``"all-linear"`` means every Linear/Conv1D layer but the output head (and a
classifier's head); ``exclude_modules`` is matched the same way; ``layers_to_transform`` keeps modules whose
first numbered path segment (after ``layers_pattern`` if given) is one of the indices. ``rank_pattern`` /
``alpha_pattern`` keys are regexes matched as ``(.*\\.)?KEY$``, first match wins.
"""
import re
from typing import Dict, List, Optional, Tuple

ALL_LINEAR = "all-linear"
CLASSIFIER_HEADS = ("score", "classifier")


def listed(entries, name: str) -> bool:
    if isinstance(entries, str):
        return re.fullmatch(entries, name) is not None
    return name in entries or any(name.endswith("." + e) for e in entries)


def layer_index(name: str, layers_pattern) -> Optional[int]:
    if not layers_pattern:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        match = None
        for pattern in [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", name)
            if match:
                break
    return int(match.group("idx")) if match else None


def is_target(config, name: str, targets) -> bool:
    """Whether module ``name`` gets an adapter under ``config`` with the resolved ``targets``."""
    if getattr(config, "exclude_modules", None) and listed(config.exclude_modules, name):
        return False
    if getattr(config, "modules_to_save", None) and any(re.match(rf"(^|.*\.){m}($|\..*)", name) for m in config.modules_to_save):
        return False
    if not listed(targets, name):
        return False
    layers = getattr(config, "layers_to_transform", None)
    if isinstance(targets, str) or layers is None or layers == []:
        return True
    index = layer_index(name, getattr(config, "layers_pattern", None))
    if index is None:
        return False
    return index == layers if isinstance(layers, int) else index in layers


def pattern_value(patterns: Dict[str, float], name: str, default):
    """The value of the first key of ``patterns`` matching ``name`` as ``(.*\\.)?KEY$``, else ``default``."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def match_linear_layers(model, config, peft_type: str, layer_class) -> Tuple[List[str], Dict[str, object]]:
    """The Linear / Conv1D layers (or ``layer_class`` layers already adapted) a linear-layer method's config
    targets: ``(matched paths, {path: cell})``. ``target_modules`` None takes the family's default for
    ``peft_type`` (written back into the config, as PEFT does) and ``"all-linear"`` every linear layer but the
    output head; nothing matched is an error naming the layers there are."""
    from ..models.common.layers import Conv1D, Linear
    from ..registry import TUNERS
    from .tuner_layer import TunerLayer
    from .tuner_model import is_adapter_path

    if config.target_modules is None:
        config.target_modules = TUNERS.get(peft_type).targets_for(model)
    candidates = {name: cell for name, cell in model.cells_and_names()  # not inside any method's adapters
                  if name and isinstance(cell, (Linear, Conv1D, layer_class)) and not is_adapter_path(name)}
    targets = config.target_modules
    if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
        targets = [n for n in candidates if n.split(".")[-1] not in ("lm_head", *CLASSIFIER_HEADS)]
    matched = [name for name in candidates if is_target(config, name, targets)]
    taken = [f"{name} ({type(cell).__name__})" for name, cell in model.cells_and_names()
             if name and name not in candidates and isinstance(cell, TunerLayer) and not is_adapter_path(name)
             and is_target(config, name, targets)]
    if taken:
        raise ValueError(f"{peft_type} cannot adapt {', '.join(taken[:3])}: a layer holds one method's adapters; "
                         "target other layers")
    if not matched:
        raise ValueError(f"target_modules {config.target_modules!r} matched no linear layer of {type(model).__name__}; "
                         f"layers are named like {', '.join(list(candidates)[:6])}, ...")
    if isinstance(config.target_modules, str) and config.target_modules.lower() == ALL_LINEAR:
        config.target_modules = sorted(matched)  # PEFT saves the expanded list
    return matched, candidates


def seeded_rng(seed):
    """The generator that initialises adapters: ``seed``, else MindSpore's global seed (``mindspore.set_seed``
    makes initialisation repeatable, as ``torch.manual_seed`` does for PEFT)."""
    import numpy as np

    if seed is None:
        import mindspore as ms

        seed = ms.get_seed()
    return np.random.default_rng(seed)
