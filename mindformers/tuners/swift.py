"""ModelScope SWIFT's API: ``Swift.prepare_model``/``from_pretrained``/``merge``, ``SwiftModel``.

SWIFT's folder layout: ``<dir>/configuration.json`` and one sub-folder per adapter holding
``adapter_config.json`` (with ``"swift_type": "LORA"``) and ``adapter_model.safetensors`` whose keys keep the
adapter name (``model.layers.0.self_attn.q_proj.lora_A.<adapter>.weight``). ``save_to_peft_format``
rewrites such a folder the way PEFT lays adapters out.
"""
import dataclasses
import json
import os
from typing import Dict, List, Optional, Union

from mindspore import nn
from safetensors.numpy import save_file

from ..checkpoint.safetensors_dir import _read_file
from ..registry import TUNERS
from ..utils import atomic_path, atomic_write_text
from .config import WEIGHTS_NAME, TunerConfig, read_config_file
from .lora.config import LoRAConfig
from .peft import DEFAULT_ADAPTER, PeftModel, config_from_dir
from .tuner_model import TunerModel, adapted_modules_in, iter_adapter_dirs, peft_key_map


class SwiftModel(TunerModel):
    """A model with SWIFT-style adapters: all active after ``prepare_model``, switchable per thread."""

    @property
    def adapters(self) -> Dict[str, TunerConfig]:
        return dict(self.peft_config)

    def add_adapter(self, name, config, seed=None) -> None:
        super().add_adapter(name, config, seed)
        self.state.set_active([*self.state.active(), name])  # SWIFT activates every prepared tuner

    def save_pretrained(self, save_directory: str, safe_serialization: bool = True,
                        adapter_name: Optional[Union[str, List[str]]] = None) -> None:
        """``<dir>/<adapter>/adapter_config.json`` + ``adapter_model.safetensors`` per adapter."""
        if not safe_serialization:
            raise ValueError("only safetensors files are written (safe_serialization=True)")
        names = [adapter_name] if isinstance(adapter_name, str) else adapter_name or list(self.peft_config)
        for name in names:
            self._check_name(name)
            if name in self._offloaded:
                raise ValueError(f"adapter {name!r} is offloaded; activate it before saving it")
            self._save_adapter(os.path.join(save_directory, name), name, peft_keys=False)
        marker = os.path.join(save_directory, "configuration.json")
        if not os.path.exists(marker):
            atomic_write_text(marker, json.dumps({"framework": "mindspore", "task": "text-generation"}) + "\n")

    def set_active_adapters(self, adapter_names: Union[str, List[str]], offload: Optional[str] = None) -> None:
        """Activate exactly ``adapter_names``; the others are deactivated (and offloaded if asked)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        for name in names:
            self._check_name(name)
        for name in list(self.peft_config):
            if name not in names and name not in self._offloaded:
                self._offload(name, offload)
        self.set_adapter(names)

    def activate_adapter(self, adapter_name: str) -> None:
        """Add ``adapter_name`` to the active adapters (restoring it if it was offloaded)."""
        self._check_name(adapter_name)
        self.set_adapter([*[n for n in self.state.active() if n != adapter_name], adapter_name])

    def deactivate_adapter(self, adapter_name: str, offload: Optional[str] = None) -> None:
        """Stop running ``adapter_name``; ``offload='cpu'`` keeps a host copy of its weights and frees
        them from the layers, ``'meta'`` frees them and reloads from its directory on activation."""
        self._check_name(adapter_name)
        self.state.set_active([n for n in self.state.active() if n != adapter_name])
        if adapter_name not in self._offloaded:
            self._offload(adapter_name, offload)

    @classmethod
    def from_pretrained(cls, model: nn.Cell, model_id: str,
                        adapter_name: Optional[Union[str, List[str], Dict[str, str]]] = None,
                        inference_mode: bool = False) -> "SwiftModel":
        """Load SWIFT adapters saved under ``model_id``.

        Args:
            adapter_name: None (all), a name, a list of names, or ``{saved name: new name}``.
            inference_mode: load them frozen.
        """
        saved = dict(iter_adapter_dirs(model_id))
        if adapter_name is None:
            rename = {n: n for n in saved}
        elif isinstance(adapter_name, str):
            rename = {adapter_name: adapter_name}
        elif isinstance(adapter_name, dict):
            rename = dict(adapter_name)
        else:
            rename = {n: n for n in adapter_name}
        missing = sorted(set(rename) - set(saved))
        if missing or not rename:
            raise ValueError(f"{model_id} has no adapter(s) {missing or '(none asked)'}; it holds {sorted(saved)}")
        swift_model = model if isinstance(model, SwiftModel) else cls(model, {})
        for old, new in rename.items():
            config = config_from_dir(saved[old])
            config.inference_mode = inference_mode
            weights_path = os.path.join(saved[old], WEIGHTS_NAME)
            swift_model.add_adapter(new, config)
            try:
                weights = {k.replace(f".{old}.", f".{new}."): v for k, v in _read_file(weights_path).items()}
                swift_model.load_adapter_weights(new, weights, peft_keys=False, source=weights_path)
            except (ValueError, FileNotFoundError):
                swift_model.delete_adapter(new)
                raise
            swift_model._sources[new] = saved[old]
        return swift_model


class Swift:
    """Entry points of the SWIFT API."""

    @staticmethod
    def prepare_model(model: nn.Cell, config: Union[TunerConfig, Dict[str, TunerConfig]], seed: Optional[int] = None):
        """Add one config (adapter ``default``) or ``{name: config}``; callable again on the result."""
        configs = config if isinstance(config, dict) else {DEFAULT_ADAPTER: config}
        if isinstance(model, PeftModel):
            raise TypeError("model is a PeftModel; use its add_adapter")
        if isinstance(model, SwiftModel):
            for name, cfg in configs.items():
                model.add_adapter(name, cfg, seed)
            return model
        return SwiftModel(model, configs, seed=seed)

    @staticmethod
    def from_pretrained(model: nn.Cell, model_id: str, adapter_name=None, inference_mode: bool = False,
                        is_trainable: Optional[bool] = None):
        """SWIFT adapters from ``model_id``, or a PEFT adapter when the directory holds one."""
        top = os.path.join(model_id, "adapter_config.json")
        if os.path.isfile(top) and "swift_type" not in read_config_file(model_id):
            trainable = not inference_mode if is_trainable is None else is_trainable
            name = adapter_name if isinstance(adapter_name, str) else DEFAULT_ADAPTER
            return PeftModel.from_pretrained(model, model_id, name, is_trainable=trainable)
        return SwiftModel.from_pretrained(model, model_id, adapter_name, inference_mode)

    @staticmethod
    def merge(model: TunerModel, adapter_name: Optional[Union[str, List[str]]] = None) -> None:
        """Fold adapters (default: the active ones) into the base weights, keeping them."""
        model.merge_adapter([adapter_name] if isinstance(adapter_name, str) else adapter_name)

    @staticmethod
    def unmerge(model: TunerModel) -> None:
        model.unmerge_adapter()

    @staticmethod
    def merge_and_unload(model: TunerModel, adapter_name: Optional[Union[str, List[str]]] = None) -> nn.Cell:
        """Merge and return the plain base model."""
        return model.merge_and_unload([adapter_name] if isinstance(adapter_name, str) else adapter_name)

    @staticmethod
    def save_to_peft_format(ckpt_dir: str, output_dir: str) -> None:
        """Rewrite a SWIFT folder in PEFT's layout (``default`` at the top, other adapters in sub-folders).

        Every adapter is read and converted before anything is written, so a broken or unconvertible adapter
        leaves ``output_dir`` as it was."""
        adapters = dict(iter_adapter_dirs(ckpt_dir))
        if not adapters:
            raise ValueError(f"{ckpt_dir} holds no SWIFT adapter folders")
        converted = []
        for name, directory in adapters.items():
            config = config_from_dir(directory)
            method = TUNERS.get(config.peft_type)
            if not method.peft_format:
                raise ValueError(f"{directory}: adapter {name!r} is a {config.peft_type} tuner, which PEFT does not "
                                 "have; it stays in SWIFT's layout")
            weights = _read_file(os.path.join(directory, WEIGHTS_NAME))
            keys = peft_key_map(weights, name, adapted_modules_in(weights, name))
            peft_class = method.config_class  # PEFT's config: SWIFT-only fields dropped
            fields = {f.name for f in dataclasses.fields(peft_class)}
            peft_config = peft_class.from_dict({k: v for k, v in config.to_dict().items() if k in fields})
            target = output_dir if name == DEFAULT_ADAPTER else os.path.join(output_dir, name)
            converted.append((target, {keys[k]: v for k, v in weights.items()}, peft_config))
        for target, weights, peft_config in converted:
            os.makedirs(target, exist_ok=True)
            with atomic_path(os.path.join(target, WEIGHTS_NAME)) as tmp:
                save_file(weights, tmp, metadata={"format": "pt"})
            peft_config.save_pretrained(target)


__all__ = ["LoRAConfig", "Swift", "SwiftModel"]
