"""Adding a LongLoRA adapter (SWIFT's ``LongLoRA.prepare_model``): LoRA layers as LoRA adds them, the
shifted sparse attention in every attention layer's ``tuner`` slot, and the embeddings and norms it trains."""
import re
from typing import List, Optional, Set

from mindspore import nn

from ...registry import TUNERS
from ..attention import attention_layers, install
from ..lora.model import inject_lora
from ..tuner_layer import AdapterState
from ..tuner_model import adapter_slots
from .config import LongLoRAConfig
from .layer import ShiftedSparseAttention


def trains_in_full(config: LongLoRAConfig, path: str) -> bool:
    """Whether ``embedder_and_normalizer`` selects parameter ``path`` (SWIFT: a string is a regex for the whole
    name, a list holds substrings)."""
    rule = config.embedder_and_normalizer
    if isinstance(rule, str):
        return re.fullmatch(rule, path) is not None
    return any(part in path for part in rule)


def inject_longlora(model: nn.Cell, config: LongLoRAConfig, adapter_name: str, state: AdapterState,
                    seed: Optional[int] = None) -> List[str]:
    layers = attention_layers(model, "LongLoRA")
    adapted = inject_lora(model, config, adapter_name, state, seed)
    for path, attention in layers:
        install(attention, ShiftedSparseAttention, path, state).add_adapter(adapter_name, config.group_size_ratio)
    extras = sorted(p for p, _ in model.parameters_and_names() if not _is_adapter(p) and trains_in_full(config, p))
    if not extras:
        raise ValueError(f"embedder_and_normalizer {config.embedder_and_normalizer!r} selects no parameter of "
                         f"{type(model).__name__} (names like {next(iter(dict(model.parameters_and_names())))})")
    registry = getattr(model, "_longlora_extras", None)
    if registry is None:
        registry = {}
        object.__setattr__(model, "_longlora_extras", registry)
    registry[adapter_name] = set(extras)
    return adapted + [f"{path}.tuner" for path, _ in layers]


def _is_adapter(path: str) -> bool:
    slots = adapter_slots()
    return any(part in slots for part in path.split("."))


def owned_paths(model: nn.Cell, adapter_name: str) -> Set[str]:
    """Adapter ``adapter_name``'s state: its LoRA tensors and the embeddings and norms it trains."""
    lora = {path for path, _ in model.parameters_and_names()
            if any(f".{slot}.{adapter_name}." in f".{path}" for slot in TUNERS.get("LORA").slots)}
    return lora | getattr(model, "_longlora_extras", {}).get(adapter_name, set())
