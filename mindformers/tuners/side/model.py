"""Putting Side networks into a model (ms-swift ``Side.prepare_model``): every module whose path fully matches
``target_modules`` gets ``side_<name>``."""
import inspect
import re
from typing import List, Optional

from mindspore import nn

from ...models.common.decoder import DecoderStack
from ...models.common.layers import Embedding
from ..targets import seeded_rng
from ..tuner_layer import AdapterState, TunerLayer, rename_parameters
from .config import SideConfig
from .layer import SideHost, side_host


def source_index(cell: nn.Cell, pos, path: str) -> int:
    """The call position of ``source_hidden_pos`` (an index, or a required argument of ``construct``)."""
    cls = type(cell)._original_class if isinstance(cell, SideHost) else type(cell)  # a host's construct is *args
    params = list(inspect.signature(cls.construct).parameters.values())[1:]  # without self
    required = [p.name for p in params if p.default is inspect.Parameter.empty and
                p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if isinstance(pos, str):
        if pos not in required:
            raise ValueError(f"source_hidden_pos {pos!r} is not a required argument of {path} "
                             f"({cls.__name__}.construct takes {[p.name for p in params]}; required: {required})")
        return required.index(pos)
    if pos >= len(required) and not any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in params):
        raise ValueError(f"source_hidden_pos {pos} is past the required arguments {required} of {path} "
                         f"({cls.__name__}.construct)")
    return pos


def _refusal(cell: nn.Cell) -> Optional[str]:
    if isinstance(cell, (nn.CellList, nn.CellDict)):
        return f"a {type(cell).__name__} has no forward of its own (SWIFT refuses ModuleList/ModuleDict too)"
    if isinstance(cell, DecoderStack):
        return "a decoder stack is run through its layers, not its construct; target its layers or final norm"
    if isinstance(cell, Embedding):
        return "an embedding reads token ids, which a side MLP cannot"
    if isinstance(cell, TunerLayer) and not isinstance(cell, SideHost):
        return f"it holds another method's adapters ({type(cell).__name__})"
    return None


def inject_side(model: nn.Cell, config: SideConfig, adapter_name: str, state: AdapterState,
                seed: Optional[int] = None) -> List[str]:
    """Give every module matching ``config.target_modules`` the side network ``side_<adapter_name>``.

    Returns:
        The paths of the modules that now blend a side network.
    """
    if not config.target_modules:
        raise ValueError(r"SideConfig.target_modules is required (a regex of whole module paths, e.g. "
                         r"'model\.layers\.\d+')")
    if config.dim is None:
        config.dim = model.config.hidden_size
    from ..tuner_model import is_adapter_path

    cells = [(path, cell) for path, cell in model.cells_and_names() if path and not is_adapter_path(path)]
    matched = [(path, cell) for path, cell in cells if re.fullmatch(config.target_modules, path)]
    if not matched:
        raise ValueError(f"SideConfig.target_modules {config.target_modules!r} matched no module of "
                         f"{type(model).__name__} (whole-path regex); modules are named like "
                         f"{', '.join(p for p, _ in cells[:3] + cells[4:7])}, ...")
    for path, cell in matched:
        refusal = _refusal(cell)
        if refusal:
            raise ValueError(f"Side cannot target {path} ({type(cell).__name__}): {refusal}")
    rng = seeded_rng(seed)
    for path, cell in matched:
        source = source_index(cell, config.source_hidden_pos, path)
        side_host(cell, state).add_adapter(adapter_name, config.dim, rng, source, config.target_hidden_pos)
    rename_parameters(model)
    return [path for path, _ in matched]
