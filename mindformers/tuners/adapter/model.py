"""Putting SWIFT Adapters into a model (ms-swift ``Adapter.prepare_model``): every module whose path matches
``target_modules`` (a whole-name regex, or a list of name endings) gets ``adapter_<name>``."""
import re
from typing import List, Optional

import numpy as np
from mindspore import nn

from ..tuner_layer import AdapterState, rename_parameters
from .config import AdapterConfig
from .layer import adapt


def _matches(targets, path: str) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, path) is not None
    return any(path.endswith(t) for t in targets)


def inject_adapter(model: nn.Cell, config: AdapterConfig, adapter_name: str, state: AdapterState,
                   seed: Optional[int] = None) -> List[str]:
    if not config.target_modules:
        raise ValueError("AdapterConfig.target_modules is required (e.g. 'mlp' or r'.*layers\\.\\d+\\.mlp')")
    if config.dim is None:
        config.dim = model.config.hidden_size
    from ..tuner_model import is_adapter_path

    matched = [path for path, _ in model.cells_and_names()  # not inside any method's adapters
               if path and not is_adapter_path(path) and _matches(config.target_modules, path)]
    if not matched:
        raise ValueError(f"target_modules {config.target_modules!r} matched no module of {type(model).__name__}; "
                         f"modules are named like {', '.join(p for p, _ in list(model.cells_and_names())[1:7])}, ...")
    if seed is None:
        import mindspore as ms

        seed = ms.get_seed()
    rng = np.random.default_rng(seed)
    cells = dict(model.cells_and_names())
    for path in matched:
        adapt(cells[path], state, config.hidden_pos).add_adapter(adapter_name, config, rng)
    rename_parameters(model)
    return matched
