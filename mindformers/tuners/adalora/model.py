"""Putting AdaLoRA layers into a model (PEFT's ``AdaLoraModel``), its training hooks and its file.

- ``inject_adalora``: every targeted linear layer gets rank ``init_r``, or the number of triplets its
  ``rank_pattern`` entry keeps (an allocated adapter being loaded, saved shrunk as PEFT saves it).
- ``OrthRegulariser``: ``orth_reg_weight * mean over A and B of ||A A^T - I||_F / ||B^T B - I||_F``, added to
  the training loss (PEFT adds it in ``AdaLoraModel.forward``; the Trainer adds it to its compiled step).
- ``update_and_allocate``: the rank allocation after each optimizer step (``allocator.py``).
- ``export_adalora``: the PEFT file keeps only the triplets the allocation kept.
- ``checkpoint_state`` / ``restore_state``: the allocator's state in training checkpoints (exact resume).
"""
import re
from typing import Dict, List, Optional

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from ...models.common.layers import Conv1D
from ..targets import match_linear_layers, seeded_rng
from ..tuner_layer import AdapterState, rename_parameters, replace_module
from ..tuner_model import PEFT_PREFIX
from .allocator import RankAllocator
from .config import E_SLOT, AdaLoraConfig
from .layer import SLOTS, SVDLinear


def inject_adalora(model: nn.Cell, config: AdaLoraConfig, adapter_name: str, state: AdapterState,
                   seed: Optional[int] = None) -> List[str]:
    matched, candidates = match_linear_layers(model, config, "ADALORA", SVDLinear)
    rng = seeded_rng(seed)
    for name in matched:
        layer = candidates[name]
        if not isinstance(layer, SVDLinear):
            if isinstance(layer, Conv1D):
                config.fan_in_fan_out = True  # as PEFT does for GPT-2's Conv1D
            layer = SVDLinear(layer, state)
            replace_module(model, name, layer)
        keep = config.pattern_of(name)
        if keep is not None and len(keep) != config.init_r:
            raise ValueError(f"rank_pattern[{name}.{E_SLOT!r}] has {len(keep)} entries; init_r={config.init_r} "
                             "triplets were expected")
        r = config.init_r if keep is None else int(sum(keep))
        layer.add_adapter(adapter_name, r, config.init_r, config.lora_alpha, config.lora_dropout,
                          config.init_lora_weights, rng)
    rename_parameters(model)
    return matched


def svd_layers(model: nn.Cell, adapter: str) -> Dict[str, SVDLinear]:
    """Module path -> AdaLoRA layer holding ``adapter``."""
    return {path: cell for path, cell in model.cells_and_names()
            if isinstance(cell, SVDLinear) and adapter in cell.adapter_names}


def _check_single_trainable(tuner_or_configs) -> None:
    trainable = [n for n, c in tuner_or_configs.items() if c.peft_type == "ADALORA" and not c.inference_mode]
    if len(trainable) > 1:
        raise ValueError(f"AdaLoRA trains one adapter at a time, found {trainable}; set inference_mode=True on all "
                         "but one (PEFT has the same rule)")


class OrthRegulariser(nn.Cell):
    """``orth_reg_weight * mean(||A A^T - I||_F, ||B^T B - I||_F over every layer)`` of one adapter (a scalar).
    Holds the model's layers without renaming their Parameters."""

    def __init__(self, layers: List[SVDLinear], adapter: str, weight: float):
        super().__init__(auto_prefix=False)
        self.layers = nn.CellList(layers, auto_prefix=False)
        self.adapter = adapter
        self.scale = float(weight) / (2 * len(layers))  # A and B of each layer

    def construct(self):
        total = ops.zeros((), ms.float32)
        for layer in self.layers:
            total = total + layer.orth_penalty(self.adapter)
        return total * self.scale


def orth_regulariser(model: nn.Cell, config: AdaLoraConfig, adapter: str) -> OrthRegulariser:
    """TunerMethod.regulariser: the penalty of ``adapter``'s layers."""
    return OrthRegulariser(list(svd_layers(model, adapter).values()), adapter, config.orth_reg_weight)


def update_and_allocate(tuner, adapter: str, grads: Dict[str, np.ndarray], global_step: int) -> None:
    """PEFT's ``update_and_allocate(global_step)`` for adapter ``adapter`` of ``tuner`` (a PeftModel): call it after
    every optimizer step (the Trainer does, as the TunerMethod ``after_step`` hook) with that step's gradients
    (parameter path ``<module>.lora_A.<adapter>`` ... -> array) and its 0-based index. Updates the importance
    scores, prunes triplets to the step's budget (E = 0) and records ``rank_pattern`` in the adapter's config."""
    config = tuner.peft_config[adapter]
    _check_single_trainable(tuner.peft_config)
    layers = svd_layers(tuner.base_model, adapter)
    allocator = tuner.method_state.get(adapter)
    if allocator is None:
        allocator = tuner.method_state[adapter] = RankAllocator(config, {p: l.r[adapter] for p, l in layers.items()})
    weights = {p: {slot: getattr(l, slot)[adapter].asnumpy() for slot in SLOTS} for p, l in layers.items()}
    try:
        step_grads = {p: {slot: np.asarray(grads[f"{p}.{slot}.{adapter}"]) for slot in SLOTS} for p in layers}
    except KeyError as missing:
        raise ValueError(f"update_and_allocate needs the gradient of every AdaLoRA tensor of {adapter!r}; "
                         f"{missing} is missing") from None
    pattern = {key[: -len(E_SLOT) - 1]: np.asarray(keep, bool) for key, keep in (config.rank_pattern or {}).items()}
    masks = allocator.step(weights, step_grads, global_step, pattern or None)
    if masks is None:
        return
    for path, keep in masks.items():
        layers[path].mask(adapter, keep)
    config.rank_pattern = {f"{path}.{E_SLOT}": [bool(k) for k in keep] for path, keep in sorted(masks.items())}


def checkpoint_state(tuner, adapter: str) -> Dict[str, np.ndarray]:
    """TunerMethod.checkpoint_state: the allocator's averages (``exp_avg_ipt/<module>/<slot>``,
    ``exp_avg_unc/...``) and the rank pattern (``rank_pattern/<module>.lora_E``, 0/1), so a resumed run allocates
    as the uninterrupted one."""
    out = {}
    allocator = tuner.method_state.get(adapter)
    if allocator is not None:
        for kind in ("exp_avg_ipt", "exp_avg_unc"):
            out.update({f"{kind}/{module}/{slot}": value for (module, slot), value in getattr(allocator, kind).items()})
    for key, keep in (tuner.peft_config[adapter].rank_pattern or {}).items():
        out[f"rank_pattern/{key}"] = np.asarray(keep, np.uint8)
    return out


def restore_state(tuner, adapter: str, arrays: Dict[str, np.ndarray]) -> None:
    """TunerMethod.restore_state: the inverse of :func:`checkpoint_state`."""
    config = tuner.peft_config[adapter]
    layers = svd_layers(tuner.base_model, adapter)
    allocator = RankAllocator(config, {p: layer.r[adapter] for p, layer in layers.items()})
    pattern = {}
    for key, value in arrays.items():
        kind, _, rest = key.partition("/")
        if kind == "rank_pattern":
            pattern[rest] = [bool(k) for k in value]
        elif kind in ("exp_avg_ipt", "exp_avg_unc"):
            module, _, slot = rest.rpartition("/")
            getattr(allocator, kind)[(module, slot)] = value
        else:
            raise ValueError(f"unexpected entry {key!r} in AdaLoRA's checkpoint state; expected exp_avg_ipt/..., "
                             "exp_avg_unc/... or rank_pattern/...")
    tuner.method_state[adapter] = allocator
    if pattern:
        config.rank_pattern = pattern
        for path, layer in layers.items():
            keep = pattern.get(f"{path}.{E_SLOT}")
            if keep is not None and len(keep) == layer.r[adapter]:
                layer.rank_mask[adapter] = np.asarray(keep, bool)


def file_key(path: str, adapter: str) -> Optional[str]:
    """``<module>.lora_E.<adapter>`` -> ``base_model.model.<module>.lora_E`` (PEFT's ParameterDict keys)."""
    match = re.fullmatch(rf"(.*)\.({'|'.join(SLOTS)})\.{re.escape(adapter)}", path)
    return f"{PEFT_PREFIX}{match.group(1)}.{match.group(2)}" if match else None


def export_adalora(model: nn.Cell, adapter: str, weights: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """PEFT's file of an allocated adapter: each layer's A rows, E entries and B columns of the kept triplets
    (layers already at their kept rank, e.g. loaded from such a file, are saved as they are)."""
    out = dict(weights)
    for path, layer in svd_layers(model, adapter).items():
        keep = layer.rank_mask[adapter]
        if keep is None or keep.all():
            continue
        for slot in SLOTS:
            key = f"{PEFT_PREFIX}{path}.{slot}"
            kept = out[key][:, keep] if slot == "lora_B" else out[key][keep]
            out[key] = np.ascontiguousarray(kept)  # the file writes the raw buffer: column picks come F-ordered
    return out
