"""Hugging Face PEFT's API: ``get_peft_model``, ``PeftModel``, the state-dict helpers and status reports.

Files are PEFT's: ``adapter_config.json`` + ``adapter_model.safetensors`` per adapter, the ``default``
adapter at the top of the directory and others in sub-folders named after them.
"""
import dataclasses
import os
from typing import Any, Dict, List, Optional

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn

from ..registry import TUNERS
from .config import TunerConfig, read_config_file
from .tuner_model import TunerModel, saved_paths

DEFAULT_ADAPTER = "default"


def config_from_dir(directory: str):
    """The tuner config saved in ``directory`` (PEFT or SWIFT file), by its registered type."""
    data = read_config_file(directory)
    kind = str(data.get("peft_type") or data.get("swift_type") or "").upper()
    if kind not in TUNERS:
        raise ValueError(f"{directory}: tuner type {kind or '(none)'} is not supported; supported: {TUNERS.names()}")
    method = TUNERS.get(kind)
    cls = (method.swift_config_class or method.config_class) if "swift_type" in data else method.config_class
    return cls.from_dict(data, os.path.join(directory, "adapter_config.json"))


class PeftModel(TunerModel):
    """A model with PEFT-format adapters (see :class:`TunerModel` for the shared behaviour)."""

    @classmethod
    def from_pretrained(cls, model: nn.Cell, model_id: str, adapter_name: str = DEFAULT_ADAPTER,
                        is_trainable: bool = False, config: Optional[TunerConfig] = None) -> "PeftModel":
        """Load the adapter saved (by PEFT or by us) in ``model_id`` onto ``model``.

        Args:
            model: the base model.
            model_id: the adapter directory.
            adapter_name: the name to give it.
            is_trainable: False loads it frozen (``inference_mode``).
            config: use this config instead of the directory's.

        Called on ``PeftModel`` itself, the class is the one of the adapter's ``task_type`` (PEFT's
        ``MODEL_TYPE_TO_PEFT_MODEL_MAPPING``: ``SEQ_CLS`` -> ``PeftModelForSequenceClassification``, ...).
        """
        if cls is PeftModel:
            from .peft_tasks import peft_model_class

            config = config or config_from_dir(model_id)
            cls = peft_model_class(config.task_type)
        peft_model = cls(model, {})
        peft_model.load_adapter(model_id, adapter_name, is_trainable=is_trainable, config=config)
        peft_model.set_adapter(adapter_name)
        return peft_model

    def load_adapter(self, model_id: str, adapter_name: str, is_trainable: bool = False,
                     config: Optional[TunerConfig] = None) -> None:
        """Add the adapter saved in ``model_id`` under ``adapter_name`` (not activated)."""
        config = config or config_from_dir(model_id)
        config = dataclasses.replace(config, inference_mode=not is_trainable)
        self._load_adapter_dir(model_id, adapter_name, config, peft_keys=True)

    def get_prompt_embedding_to_save(self, adapter_name: str) -> Tensor:
        """A prompt-learning adapter's table, what PEFT saves as ``prompt_embeddings``: the virtual-token
        embeddings [num_virtual_tokens, hidden] (p-tuning: its encoder's output), or prefix tuning's keys and
        values of every layer [num_virtual_tokens, layers * 2 * kv_heads * head_dim]."""
        return self._prompt_layer(adapter_name).prompt(adapter_name)

    def get_prompt(self, batch_size: int):
        """The active prompt-learning adapter's prompt for a batch: the virtual-token embeddings
        [batch, n, hidden], or for prefix tuning the past key values, one ``(key, value)`` pair per layer of
        [batch, kv_heads, n, head_dim] each (PEFT's ``get_prompt``)."""
        name = self.active_adapter
        if name is None:
            raise ValueError("no adapter is active")
        layer = self._prompt_layer(name)
        if hasattr(layer, "past_key_values"):
            return layer.past_key_values(name, batch_size)
        prompt = layer.prompt(name)
        return ms.ops.broadcast_to(prompt.expand_dims(0), (batch_size,) + tuple(prompt.shape))

    def _prompt_layer(self, adapter_name: str):
        self._check_name(adapter_name)
        for layer in self.tuner_layers().values():
            if hasattr(layer, "prompt") and adapter_name in layer.adapter_names:
                return layer
        raise ValueError(f"adapter {adapter_name!r} is a {self.peft_config[adapter_name].peft_type} adapter, not a "
                         "prompt-learning one (prompt tuning, p-tuning, prefix tuning)")

    def save_pretrained(self, save_directory: str, selected_adapters: Optional[List[str]] = None,
                        safe_serialization: bool = True) -> None:
        """Write each adapter in PEFT's layout (``default`` at the top, others in sub-folders)."""
        if not safe_serialization:
            raise ValueError("only safetensors files are written (safe_serialization=True)")
        for name in selected_adapters or list(self.peft_config):
            directory = save_directory if name == DEFAULT_ADAPTER else os.path.join(save_directory, name)
            self._save_adapter(directory, name, peft_keys=True)


class PeftMixedModel(PeftModel):
    """PEFT's ``PeftMixedModel``: adapters of different methods active together (``set_adapter([...])``), for
    the methods PEFT mixes (LoRA, LoHa, LoKr, AdaLoRA) and IA3, which PEFT 0.21 refuses here although an IA3
    layer beside a LoRA layer is as well defined (each adapter is still saved in its own PEFT folder); prompt
    learning is refused, as PEFT refuses it. Each layer holds one method's adapters, so mixed adapters target
    different layers."""

    # PEFT 0.21's COMPATIBLE_TUNER_TYPES, plus IA3
    MIXABLE = ("LORA", "LOHA", "LOKR", "ADALORA", "OFT", "SHIRA", "IA3")

    def add_adapter(self, name: str, config: TunerConfig, seed: Optional[int] = None) -> None:
        if config.peft_type not in self.MIXABLE:
            raise ValueError(f"the provided peft_type {config.peft_type!r} is not compatible with PeftMixedModel; "
                             f"compatible types: {list(self.MIXABLE)}")
        super().add_adapter(name, config, seed)


def get_peft_model(model: nn.Cell, peft_config: TunerConfig, adapter_name: str = DEFAULT_ADAPTER,
                   seed: Optional[int] = None, mixed: bool = False) -> PeftModel:
    """``model`` with a new, trainable adapter ``adapter_name`` (base weights frozen), wrapped in the PEFT model
    class of the config's ``task_type`` (``CAUSAL_LM`` -> ``PeftModelForCausalLM``, ``SEQ_CLS`` ->
    ``PeftModelForSequenceClassification``, ..., None -> ``PeftModel``; see :mod:`.peft_tasks`); ``mixed``: a
    :class:`PeftMixedModel`, to which adapters of other methods can be added and activated together."""
    from .peft_tasks import peft_model_class

    if peft_config.base_model_name_or_path is None:
        peft_config = dataclasses.replace(peft_config, base_model_name_or_path=getattr(model, "name_or_path", None))
    return (PeftMixedModel if mixed else peft_model_class(peft_config.task_type))(model, {adapter_name: peft_config},
                                                                                  seed=seed)


def inject_adapter_in_model(peft_config: TunerConfig, model: nn.Cell, adapter_name: str = DEFAULT_ADAPTER) -> nn.Cell:
    """Add LoRA layers to ``model`` in place and return it (no wrapper); the adapter is active."""
    tuner = getattr(model, "_tuner", None) or PeftModel(model, {})
    tuner.add_adapter(adapter_name, peft_config)
    object.__setattr__(model, "_tuner", tuner)
    return model


def _tuner_of(model) -> TunerModel:
    tuner = model if isinstance(model, TunerModel) else getattr(model, "_tuner", None)
    if tuner is None:
        raise ValueError(f"{type(model).__name__} has no adapters (use get_peft_model or inject_adapter_in_model)")
    return tuner


def get_peft_model_state_dict(model, state_dict: Optional[Dict[str, Any]] = None,
                              adapter_name: str = DEFAULT_ADAPTER) -> Dict[str, np.ndarray]:
    """Adapter ``adapter_name``'s tensors under the keys PEFT writes to ``adapter_model.safetensors``."""
    tuner = _tuner_of(model)
    if state_dict is None:
        return tuner.adapter_weights(adapter_name, peft_keys=True)
    keys = saved_paths(tuner.base_model, adapter_name, tuner.peft_config[adapter_name], peft_keys=True)
    return {key: np.asarray(state_dict[path]) for key, path in keys.items() if path in state_dict}


def set_peft_model_state_dict(model, peft_model_state_dict: Dict[str, Any], adapter_name: str = DEFAULT_ADAPTER):
    """Load PEFT-keyed adapter tensors into adapter ``adapter_name`` (which must exist)."""
    tuner = _tuner_of(model)
    weights = {k: np.asarray(v.asnumpy() if isinstance(v, Tensor) else v) for k, v in peft_model_state_dict.items()}
    tuner.load_adapter_weights(adapter_name, weights, peft_keys=True, source="the given state dict")


@dataclasses.dataclass
class TunerLayerStatus:
    name: str
    module_type: str
    enabled: bool
    active_adapters: List[str]
    merged_adapters: List[str]
    requires_grad: Dict[str, bool]
    available_adapters: List[str]
    devices: Dict[str, List[str]]


@dataclasses.dataclass
class TunerModelStatus:
    base_model_type: str
    adapter_model_type: str
    peft_types: Dict[str, str]
    trainable_params: int
    total_params: int
    num_adapter_layers: int
    enabled: bool
    active_adapters: List[str]
    merged_adapters: List[str]
    requires_grad: Dict[str, bool]
    available_adapters: List[str]
    devices: Dict[str, List[str]]


def get_layer_status(model) -> List[TunerLayerStatus]:
    """One status per adapter-holding layer (PEFT's ``get_layer_status``)."""
    tuner = _tuner_of(model)
    device = ms.get_context("device_target")
    statuses = []
    for name, layer in tuner.tuner_layers().items():
        params = dict(layer.parameters_and_names())
        grads = {a: all(p.requires_grad for k, p in params.items() if f".{a}." in f".{k}.") for a in layer.adapter_names}
        statuses.append(TunerLayerStatus(
            name=name, module_type=type(layer).__name__, enabled=bool(tuner.state.active()),
            active_adapters=[a for a in tuner.state.active() if a in layer.adapter_names],
            merged_adapters=list(layer.merged_adapters), requires_grad=grads,
            available_adapters=sorted(layer.adapter_names), devices={a: [device] for a in layer.adapter_names}))
    return statuses


def get_model_status(model) -> TunerModelStatus:
    """The model-wide summary of :func:`get_layer_status`."""
    tuner = _tuner_of(model)
    layers = get_layer_status(tuner)
    trainable, total = tuner.get_nb_trainable_parameters()
    requires_grad: Dict[str, bool] = {}
    for status in layers:
        for name, flag in status.requires_grad.items():
            requires_grad[name] = requires_grad.get(name, True) and flag
    return TunerModelStatus(
        base_model_type=type(tuner.base_model).__name__, adapter_model_type=type(tuner).__name__,
        peft_types={n: c.peft_type for n, c in tuner.peft_config.items()}, trainable_params=trainable,
        total_params=total, num_adapter_layers=len(layers), enabled=bool(tuner.state.active()),
        active_adapters=list(tuner.state.active()),
        merged_adapters=sorted({m for s in layers for m in s.merged_adapters}), requires_grad=requires_grad,
        available_adapters=sorted(tuner.peft_config), devices={n: [ms.get_context("device_target")] for n in tuner.peft_config})


def cast_mixed_precision_params(model, dtype) -> None:
    """Cast the frozen (base) parameters to ``dtype`` and keep the trainable adapter ones in float32."""
    tuner = _tuner_of(model)
    for param in tuner.base_model.get_parameters():
        target = ms.float32 if param.requires_grad else dtype
        if param.dtype != target:
            param.set_dtype(target)


def _parents(directory: str) -> List[str]:
    """``directory`` and its ancestors (a relative base path is often relative to one of them)."""
    path, out = os.path.abspath(directory), []
    while True:
        out.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            return out
        path = parent
