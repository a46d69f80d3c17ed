"""Adding NEFTune: every token embedding of the model (ms-swift hooks each ``nn.Embedding``) adds noise."""
from typing import List, Optional

from mindspore import nn

from ...models.common.layers import Embedding
from ..tuner_layer import AdapterState, rename_parameters, replace_module
from .config import NEFTuneConfig
from .layer import NEFTuneEmbedding


def inject_neftune(model: nn.Cell, config: NEFTuneConfig, adapter_name: str, state: AdapterState,
                   seed: Optional[int] = None) -> List[str]:
    from ..tuner_model import is_adapter_path

    found = [(path, cell) for path, cell in model.cells_and_names()
             if isinstance(cell, (Embedding, NEFTuneEmbedding)) and not is_adapter_path(path)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no Embedding for NEFTune to perturb")
    for path, cell in found:
        if not isinstance(cell, NEFTuneEmbedding):
            cell = NEFTuneEmbedding(cell, state)
            replace_module(model, path, cell)
        cell.add_adapter(adapter_name, config.noise_alpha)
    rename_parameters(model)
    return [path for path, _ in found]
