"""Putting a Res-Tuning bypass into a model (ms-swift ``ResTuning.prepare_model``), with SWIFT's matching:
the root is the first module whose path fully matches ``root_modules``, the stems every match of
``stem_modules`` (or the listed paths, in list order), the target the module matching ``target_modules``.

Here they must be probe points of one decoder stack (its layers, and the final ``norm`` of a Llama-style
stack; see layer.py for why), and every probe must be taken before the target is replaced, which SWIFT does
not check (a later probe would be read from the previous forward pass there).
"""
import re
from typing import Dict, List, Optional, Tuple

from mindspore import nn

from ...models.common.decoder import DecoderModel, DecoderStack
from ..targets import seeded_rng
from ..tuner_layer import AdapterState, rename_parameters
from .config import ResTuningConfig
from .layer import ResTuningBypassModule, ResTuningStack, restuning_host


def probe_points(model: nn.Cell) -> Dict[str, Tuple[str, int]]:
    """Module path -> (path of its decoder stack, input point); its output point is the next one."""
    cells = list(model.cells_and_names())
    path_of = {id(cell): path for path, cell in cells}
    points = {}
    for stack_path, stack in cells:
        if not isinstance(stack, DecoderStack):
            continue
        layers = list(stack.layer_list())
        for i, layer in enumerate(layers):
            points[path_of[id(layer)]] = (stack_path, 2 * i)
        cls = type(stack)._original_class if isinstance(stack, ResTuningStack) else type(stack)
        if issubclass(cls, DecoderModel) and cls.finish is DecoderModel.finish:  # finish is the final norm alone
            points[path_of[id(stack.norm)]] = (stack_path, 2 * len(layers))
    return points


def _match(model: nn.Cell, config: ResTuningConfig) -> Tuple[Optional[str], List[str], List[str]]:
    from ..tuner_model import is_adapter_path

    paths = [path for path, _ in model.cells_and_names() if path and not is_adapter_path(path)]
    root = None
    if config.root_modules:
        root = next((p for p in paths if re.fullmatch(config.root_modules, p)), None)
        if root is None:
            raise ValueError(f"ResTuningConfig.root_modules {config.root_modules!r} matched no module of "
                             f"{type(model).__name__} (whole-path regex); e.g. {paths[1:4]}")
    if isinstance(config.stem_modules, str):
        stems = [p for p in paths if re.fullmatch(config.stem_modules, p)]
    elif isinstance(config.stem_modules, list):
        missing = [p for p in config.stem_modules if p not in paths]
        if missing:
            raise ValueError(f"ResTuningConfig.stem_modules lists paths that are no module of {type(model).__name__}: "
                             f"{missing}")
        stems = list(config.stem_modules)
    else:
        raise ValueError("ResTuningConfig.stem_modules is required: a whole-path regex (e.g. r'model\\.layers\\.\\d+') "
                         f"or a list of module paths, found {config.stem_modules!r}")
    if not stems:
        raise ValueError(f"ResTuningConfig.stem_modules {config.stem_modules!r} matched no module of "
                         f"{type(model).__name__} (whole-path regex); e.g. {paths[1:4]}")
    if not config.target_modules:
        raise ValueError("ResTuningConfig.target_modules is required (a whole-path regex, e.g. r'model\\.norm')")
    targets = [p for p in paths if re.fullmatch(config.target_modules, p)]
    if len(targets) != 1:
        raise ValueError(f"ResTuningConfig.target_modules {config.target_modules!r} must match exactly one module of "
                         f"{type(model).__name__} (the bypass ends in one place); it matched "
                         f"{targets[:5] if targets else 'none'}")
    return root, stems, targets


def plan(model: nn.Cell, config: ResTuningConfig) -> Tuple[str, Tuple[int, Tuple[int, ...], int]]:
    """(stack path, (root point, stem points, target point)) of ``config`` on ``model``."""
    root, stems, (target,) = _match(model, config)
    points = probe_points(model)
    cells = dict(model.cells_and_names())
    for role, path in [("root", root), ("target", target)] + [("stem", p) for p in stems]:
        if path is not None and path not in points:
            raise ValueError(f"ResTuning cannot probe {path} ({type(cells[path]).__name__}) as its {role}: here the "
                             f"probes are a decoder stack's layers and final norm ({', '.join(list(points)[:2])}, ..., "
                             f"{list(points)[-1]}); for the embeddings use root_modules {list(points)[0]!r} with "
                             "root_modules_hook 'input'")
    stack_paths = {points[p][0] for p in [root, target, *stems] if p is not None}
    if len(stack_paths) > 1:
        raise ValueError(f"ResTuning's root, stems and target must be in one decoder stack, found {sorted(stack_paths)}")

    def point(path, hook):
        return points[path][1] + (hook == "output")

    root_point = point(root, config.root_modules_hook) if root else point(stems[0], "input")
    stem_points = tuple(point(p, config.stem_modules_hook) for p in stems)
    target_point = point(target, config.target_modules_hook)
    for path, hook, at in [(root or stems[0], config.root_modules_hook if root else "input", root_point)] + \
            [(p, config.stem_modules_hook, q) for p, q in zip(stems, stem_points)]:
        if at > target_point or at == target_point and config.target_modules_hook == "output":
            raise ValueError(f"ResTuning probes the {hook} of {path} after the target {target} "
                             f"({config.target_modules_hook}) is replaced; every root and stem must come before the "
                             "target in the forward pass")
    if config.target_hidden_pos != 0:
        raise ValueError(f"ResTuningConfig.target_hidden_pos {config.target_hidden_pos!r}: a decoder layer's and the "
                         "norm's hidden states are argument / output 0; the others are rotary tables, masks and "
                         "router logits")
    return stack_paths.pop(), (root_point, stem_points, target_point)


def inject_restuning(model: nn.Cell, config: ResTuningConfig, adapter_name: str, state: AdapterState,
                     seed: Optional[int] = None) -> List[str]:
    """Add adapter ``adapter_name``'s bypass (``model.restuning_<name>``) and hook its decoder stack.

    Returns:
        The path of the stack that now runs the bypass.
    """
    stack_path, (root, stems, target) = plan(model, config)
    hidden = model.config.hidden_size
    dims = config.dims if isinstance(config.dims, list) else [config.dims or hidden] * len(stems)
    if len(dims) != len(stems) or any(d != hidden for d in dims):
        raise ValueError(f"ResTuningConfig.dims {config.dims!r}: every block reads the decoder's hidden states, "
                         f"{len(stems)} block(s) of width {hidden}")
    if config.dims is None:
        config.dims = hidden
    bypass = ResTuningBypassModule(dims, config.blocks(len(stems)), config.zero_init_last, seeded_rng(seed))
    stack = dict(model.cells_and_names())[stack_path]
    restuning_host(stack, state).add_adapter(adapter_name, model, bypass, (root, stems, target))
    rename_parameters(model)
    return [stack_path]
