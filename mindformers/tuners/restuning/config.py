"""SWIFT's Res-Tuning settings (ms-swift ``ResTuningConfig``; Jiang et al. 2023, arXiv:2310.19859), saved with
``"swift_type": "RESTUNING"``.

``tuner_cfg`` is read as SWIFT reads it: a string for every block (``"res_adapter"``: lateral and vertical
tuners are both Res-Adapters), a dict ``{"lateral_cfg": ..., "vertical_cfg": ..., "aux_cfg": ...}`` for every
block, or a list with one of those per block. A tuner is ``"res_adapter"`` / ``{"res_adapter": {"adapter_length":
32, "adapter_weight": None}}``, ``"zero"`` (contributes nothing) or None (passes its input through).
"""
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Union

from ..config import TunerConfig

HOOKS = ("input", "output")
TUNER_KINDS = ("res_adapter", "zero", None)
ADAPTER_KEYS = ("adapter_length", "adapter_type", "adapter_weight")
BLOCK_KEYS = ("lateral_cfg", "vertical_cfg", "aux_cfg")
# SWIFT's image-only parts: both reshape [batch, channels, H, W] feature maps
IMAGE_TUNERS = ("res_group_adapter", "upsample")
WEIGHTS = (None, "scale", "scale_channel", "scalar_<float>")


def adapter_weight(weight, where: str):
    """SWIFT's ``adapter_weight`` as (kind, value): None, ("scale", None), ("scale_channel", None), ("scalar", f)."""
    if weight is None:
        return None
    if weight in ("scale", "scale_channel"):
        return weight, None
    if isinstance(weight, str) and weight.startswith("scalar"):
        try:
            return "scalar", float(weight.split("_")[-1])
        except ValueError:
            pass
    if weight == "gate":
        raise ValueError(f"{where}: adapter_weight 'gate' averages a gate over the sequence (SWIFT: mean over dim 1), "
                         "which lets every token see later tokens in a causal decoder; use one of "
                         f"{WEIGHTS}")
    if weight in ("scale_kv", "scale_kv_channel"):
        raise ValueError(f"{where}: adapter_weight {weight!r} makes SWIFT create two scales it never registers nor "
                         f"applies; use one of {WEIGHTS}")
    raise ValueError(f"{where}: adapter_weight must be one of {WEIGHTS}, found {weight!r}")


def tuner_spec(cfg, where: str) -> Tuple[Optional[str], Dict[str, Any]]:
    """One lateral / vertical tuner's settings as (kind, {adapter_length, adapter_weight})."""
    if cfg is None or cfg == {}:
        return None, {}
    if isinstance(cfg, str):
        name, inner = cfg, {}
    elif isinstance(cfg, dict) and len(cfg) == 1:
        name, inner = next(iter(cfg.items()))
        inner = {} if inner is None or inner == name else inner
    else:
        raise ValueError(f"{where}: a tuner is a name or {{name: settings}} with one of {TUNER_KINDS}, found {cfg!r}")
    if name in IMAGE_TUNERS:
        raise ValueError(f"{where}: {name!r} is one of SWIFT's image tuners (it reshapes [batch, channels, H, W] "
                         f"feature maps); decoders' hidden states are [batch, seq, hidden], use one of {TUNER_KINDS}")
    if name == "zero":
        return "zero", {}
    if name != "res_adapter":
        raise ValueError(f"{where}: unknown tuner {name!r}; known: {TUNER_KINDS}")
    if not isinstance(inner, dict):
        raise ValueError(f"{where}: res_adapter settings must be a dict with keys {ADAPTER_KEYS}, found {inner!r}")
    unknown = sorted(set(inner) - set(ADAPTER_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown res_adapter setting(s) {unknown}; valid: {ADAPTER_KEYS}")
    length = inner.get("adapter_length", 32)
    lengths = length if isinstance(length, list) else [length]
    if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n <= 0 for n in lengths):
        raise ValueError(f"{where}: adapter_length must be a positive int, or a list of them (one per block), "
                         f"found {length!r}")
    return "res_adapter", {"adapter_length": length, "adapter_weight": adapter_weight(inner.get("adapter_weight"), where)}


def block_spec(cfg, where: str) -> Tuple[Tuple, Tuple]:
    """(lateral, vertical) tuner specs of one bypass block, from SWIFT's per-block ``tuner_cfg``."""
    if isinstance(cfg, str):
        return tuner_spec(cfg, where), tuner_spec(cfg, where)
    if not isinstance(cfg, dict):
        raise ValueError(f"{where}: a block's tuner_cfg is a tuner name or a dict with keys {BLOCK_KEYS}, found "
                         f"{cfg!r} (SWIFT cannot build a block from it either)")
    unknown = sorted(set(cfg) - set(BLOCK_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} in a block's tuner_cfg; valid: {BLOCK_KEYS} (a "
                         "{'res_adapter': {...}} dict goes under lateral_cfg / vertical_cfg)")
    if cfg.get("aux_cfg"):
        raise ValueError(f"{where}: aux_cfg {cfg['aux_cfg']!r}: SWIFT's auxiliary tuner upsamples image feature maps, "
                         "which decoders do not have")
    return (tuner_spec(cfg.get("lateral_cfg"), f"{where}.lateral_cfg"),
            tuner_spec(cfg.get("vertical_cfg"), f"{where}.vertical_cfg"))


@dataclass
class ResTuningConfig(TunerConfig):
    """Res-Tuning-Bypass: tuners beside the backbone read its detached hidden states and build a bypass chain
    ``x_0 = root; x_{i+1} = lateral_i(stem_i) + vertical_i(x_i)`` whose end replaces the target's input (or
    output). Gradients reach only the tuners, never the backbone."""

    peft_type: ClassVar[str] = "RESTUNING"
    # SwiftConfig's key-mapping field (module names for ms-swift's model-type tables): written null as SWIFT
    # writes it; a mapping would rename modules, which is not implemented
    inert_fields: ClassVar[Dict[str, Tuple[Any, ...]]] = {"model_key_mapping": (None,)}

    dims: Optional[Union[List[int], int]] = None
    """Width of the hidden states each block reads (default: the model's hidden_size)."""
    root_modules: Optional[str] = None
    """Regex (whole path) of the module whose input or output starts the bypass; the first match is used.
    None: the first stem's input (what SWIFT's code sets out to do)."""
    root_modules_hook: str = "input"
    """Probe the root's "input" or "output"."""
    stem_modules: Optional[Union[List[str], str]] = None
    """Modules whose hidden states feed the blocks (one block each): a whole-path regex, or a list of paths
    (blocks in list order)."""
    stem_modules_hook: str = "output"
    """Probe the stems' "input" or "output"."""
    target_modules: Optional[str] = None
    """Regex (whole path) of the one module whose input (or output) the bypass replaces."""
    target_modules_hook: str = "input"
    """Replace the target's "input" or "output"."""
    target_hidden_pos: Optional[Union[int, str]] = None
    """Which argument / output element is replaced (SWIFT's default 0: the hidden states)."""
    tuner_cfg: Optional[Union[List, Dict, str]] = None
    """The blocks' tuners (see the module docstring), e.g. ``"res_adapter"``."""
    use_upsample: bool = False
    """SWIFT's image upsampling between blocks; must stay False here."""
    upsample_out_channels: Optional[List[int]] = None
    """Channels of that upsampling; must stay None."""
    zero_init_last: bool = False
    """Zero the second Linear of the last block's Res-Adapters (SWIFT's ``zero_init_last``)."""
    use_bypass: bool = True
    """In SWIFT's config but read nowhere: the bypass always runs. False is refused rather than ignored."""

    def __post_init__(self):
        if self.target_hidden_pos is None:
            self.target_hidden_pos = 0  # SWIFT's __post_init__
        for name in ("root_modules_hook", "stem_modules_hook", "target_modules_hook"):
            if getattr(self, name) not in HOOKS:
                raise ValueError(f"ResTuningConfig.{name} must be one of {HOOKS}, found {getattr(self, name)!r}")
        if self.use_upsample or self.upsample_out_channels:
            raise ValueError("ResTuningConfig.use_upsample / upsample_out_channels: SWIFT's upsampling resizes image "
                             "feature maps between blocks; decoders' hidden states keep their shape, leave them unset")
        if not self.use_bypass:
            raise ValueError("ResTuningConfig.use_bypass=False: SWIFT reads this field nowhere and always runs the "
                             "bypass; there is no other mode to switch to")
        if self.tuner_cfg is None:
            raise ValueError("ResTuningConfig.tuner_cfg is required (e.g. 'res_adapter'); SWIFT cannot build its "
                             "blocks without it either")
        for i, cfg in enumerate(self.tuner_cfg if isinstance(self.tuner_cfg, list) else [self.tuner_cfg]):
            block_spec(cfg, f"ResTuningConfig.tuner_cfg[{i}]" if isinstance(self.tuner_cfg, list) else
                       "ResTuningConfig.tuner_cfg")
        dims = self.dims if isinstance(self.dims, list) else [self.dims]
        if any(d is not None and (isinstance(d, bool) or not isinstance(d, int) or d <= 0) for d in dims):
            raise ValueError(f"ResTuningConfig.dims must be a positive int or a list of them, found {self.dims!r}")

    def blocks(self, depth: int) -> List[Tuple[Tuple, Tuple]]:
        """(lateral, vertical) tuner specs of each of ``depth`` blocks."""
        if isinstance(self.tuner_cfg, list):
            if len(self.tuner_cfg) != depth:
                raise ValueError(f"ResTuningConfig.tuner_cfg lists {len(self.tuner_cfg)} blocks but the stems give "
                                 f"{depth}")
            return [block_spec(cfg, f"ResTuningConfig.tuner_cfg[{i}]") for i, cfg in enumerate(self.tuner_cfg)]
        return [block_spec(self.tuner_cfg, "ResTuningConfig.tuner_cfg")] * depth

    def to_dict(self) -> Dict[str, Any]:
        data = super().to_dict()
        data["swift_type"] = self.peft_type
        return data
