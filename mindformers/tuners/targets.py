"""Which modules a tuner config targets, as PEFT 0.21 decides (``check_target_module_exists``), for every method.

A list entry matches a module whose name equals it or ends with ``"." + entry``; a string is a regex that
must match the whole name; ``"all-linear"`` means every Linear/Conv1D layer but the output head (and a
classifier's head); ``exclude_modules`` is matched the same way; ``layers_to_transform`` keeps modules whose
first numbered path segment (after ``layers_pattern`` if given) is one of the indices. ``rank_pattern`` /
``alpha_pattern`` keys are regexes matched as ``(.*\\.)?KEY$``, first match wins.
"""
import re
from typing import Dict, Optional

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
