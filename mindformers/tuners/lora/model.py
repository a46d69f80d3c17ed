"""Putting LoRA layers into a model: the modules a config targets (matched as mindformers/tuners/targets.py
says), PEFT's MoE retargeting, replacing them. ``rank_pattern``/``alpha_pattern`` keys are regexes matched as
``(.*\\.)?KEY$``, first match wins.
"""
import re
from typing import Dict, List, Optional

import numpy as np
from mindspore import nn

from ...models.common.layers import Conv1D, Embedding, Linear
from ..targets import ALL_LINEAR, CLASSIFIER_HEADS, is_target, pattern_value  # noqa: F401  (re-exported)
from ..tuner_layer import AdapterState, TunerLayer, rename_parameters, replace_module  # noqa: F401  (re-exported)
from .config import LoraConfig
from .layer import LoraEmbedding, LoraLinear, lora_layer_for
from .params import LoraExperts, LoraRouter, lora_for_parameters, parameter_targets


def adaptable_modules(model: nn.Cell) -> Dict[str, nn.Cell]:
    """Module path -> cell for every layer kind LoRA can adapt (already adapted layers included)."""
    from ..tuner_model import is_adapter_path

    kinds = (Linear, Conv1D, Embedding, LoraLinear, LoraEmbedding)
    # the adapters' own sub-layers (of any method) are never targets
    return {name: cell for name, cell in model.cells_and_names()
            if name and isinstance(cell, kinds) and not is_adapter_path(name)}


def resolve_targets(config: LoraConfig, model: nn.Cell):
    """The config's target_modules, with ``None`` -> the family default and ``"all-linear"`` expanded."""
    targets = config.target_modules
    if targets is None and config.target_parameters:
        return []
    if targets is None:
        from ...registry import TUNERS

        return TUNERS.get("LORA").targets_for(model)  # the family's default (PEFT's table)
    if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
        linear = [n for n, c in adaptable_modules(model).items() if isinstance(c, (Linear, Conv1D, LoraLinear))]
        excluded = {"lm_head"} | set(CLASSIFIER_HEADS)
        return sorted(n for n in linear if n.split(".")[-1] not in excluded)
    return targets


def convert_moe_targets(config: LoraConfig, model: nn.Cell) -> None:
    """Retarget, in place, what PEFT 0.21 retargets on transformers 5 MoE models (its
    ``_convert_peft_config_moe``), so adapters made here and by PEFT adapt the same tensors.

    transformers 4 had one ``nn.Linear`` per expert (``gate_proj``/``up_proj``/``down_proj``, Mixtral
    ``w1``/``w3``/``w2``) and a linear router ``gate``; transformers 5 fuses them into Parameters. PEFT maps
    those names to ``target_parameters`` (``gate_up_proj``, ``down_proj``, ``gate.weight``) and drops them from
    ``target_modules``, so dense layers with the same names (DeepSeek's first layers, shared experts, Qwen3-MoE's
    ``mlp_only_layers``) are no longer adapted; the fused gate+up tensor gets rank and alpha x2; ``"all-linear"``
    becomes the linear layers' last names plus those four. Models without experts are left alone.
    """
    layout = getattr(getattr(model, "config", None), "expert_layout", None)
    if layout is None or not isinstance(config, LoraConfig):
        return
    gate, up, down = layout.names
    mapping = {"gate": "gate.weight", gate: "gate_up_proj", up: "gate_up_proj", down: "down_proj"}
    targets = config.target_modules
    if isinstance(targets, str):
        if targets.lower() == ALL_LINEAR:
            linear = [n for n, c in adaptable_modules(model).items() if isinstance(c, (Linear, Conv1D, LoraLinear))]
            targets = {n.split(".")[-1] for n in linear if n.split(".")[-1] not in {"lm_head", *CLASSIFIER_HEADS}}
            targets |= set(mapping)
        else:  # a regex: the last names of the modules and Parameters it matches, v4 expert names included
            names = [n for n, _ in model.cells_and_names() if n] + [n for n, _ in model.parameters_and_names()]
            containers = {n.rpartition(".")[0] for n in names if n.endswith((".gate_up_proj", ".down_proj"))}
            names += [f"{c}.{old}" for c in containers for old in (gate, up, down)]
            targets = {n.split(".")[-1] for n in names if re.fullmatch(config.target_modules, n)}
            if not targets:
                return
    kept, parameters, fused = [], set(config.target_parameters or []), set()
    for target in targets or []:
        old = next((o for o in mapping if target == o or target.endswith("." + o)), None)
        if old is None:
            kept.append(target)
            continue
        parameters.add(mapping[old])
        if old in (gate, up):
            fused.add(old)
    if len(fused) == 1:
        raise ValueError(f"target_modules name {sorted(fused)[0]!r} but not {({gate, up} - fused).pop()!r}; both are "
                         "fused into the experts' gate_up_proj, so target both or neither")
    if fused:
        config.rank_pattern[r".*\.gate_up_proj"] = config.r * 2
        config.alpha_pattern[r".*\.gate_up_proj"] = config.lora_alpha * 2
    config.target_modules = sorted(kept)
    config.target_parameters = sorted(parameters) or None


def inject_lora(model: nn.Cell, config: LoraConfig, adapter_name: str, state: AdapterState,
                seed: Optional[int] = None) -> List[str]:
    """Add adapter ``adapter_name`` to every module and Parameter ``config`` targets, wrapping plain layers.

    Returns:
        The adapted module names (``<module>.<param>`` for target_parameters). Raises ``ValueError`` when
        nothing matches.
    """
    if config.target_modules is None and not config.target_parameters:  # the family default, as PEFT fills it
        config.target_modules = resolve_targets(config, model)  # before the MoE retargeting
    convert_moe_targets(config, model)
    targets = resolve_targets(config, model)
    modules = adaptable_modules(model)
    matched = [name for name in modules if is_target(config, name, targets)] if targets else []
    by_parameter = parameter_targets(model, config.target_parameters or [])
    if config.target_parameters and not by_parameter:
        raise ValueError(f"target_parameters {config.target_parameters} match no Parameter of {type(model).__name__}; "
                         "MoE experts are 'mlp.experts.gate_up_proj' / 'mlp.experts.down_proj', routers 'gate.weight'")
    if not matched and not by_parameter:
        sample = ", ".join(list(modules)[:6])
        suffixes = sorted({n.split(".")[-1] for n in modules})
        raise ValueError(
            f"target_modules {config.target_modules!r} matched no layer of {type(model).__name__}; adaptable layers "
            f"are named like {sample}, ... (last parts: {suffixes})"
        )
    if seed is None:  # like PEFT under torch.manual_seed: mindspore.set_seed(n) makes the initialisation repeatable
        import mindspore as ms

        seed = ms.get_seed()
    rng = np.random.default_rng(seed)
    for name in matched:
        layer = modules[name]
        if not isinstance(layer, TunerLayer):
            if isinstance(layer, Conv1D) and not config.fan_in_fan_out:
                config.fan_in_fan_out = True  # as PEFT does for GPT-2's Conv1D (with a warning there)
            layer = lora_layer_for(layer, state)
            replace_module(model, name, layer)
        r, alpha = config.rank_and_alpha(name)
        layer.add_adapter(adapter_name, r, alpha, config.scaling(r, alpha), config.lora_dropout,
                          config.init_lora_weights, config.use_dora, rng)
    cells = dict(model.cells_and_names())
    for path, params in by_parameter.items():
        layer = lora_for_parameters(cells[path], params, state, path)
        if layer is not cells[path]:
            replace_module(model, path, layer)
        for param in params:
            r, alpha = config.rank_and_alpha(f"{path}.{param}")
            layer.add_param_adapter(param, adapter_name, r, config.scaling(r, alpha), config.init_lora_weights, rng)
        matched += [f"{path}.{param}" for param in params]
    rename_parameters(model)
    if isinstance(config.target_modules, str) and config.target_modules.lower() == ALL_LINEAR:
        config.target_modules = sorted(matched)  # PEFT saves the expanded list
    return matched


def lora_layers(model: nn.Cell) -> Dict[str, TunerLayer]:
    kinds = (LoraLinear, LoraEmbedding, LoraExperts, LoraRouter)
    return {name: cell for name, cell in model.cells_and_names() if isinstance(cell, kinds)}


