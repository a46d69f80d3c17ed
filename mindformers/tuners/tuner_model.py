"""A base model with named adapters: the core shared by the PEFT-style and SWIFT-style APIs, for every
registered tuner method (``TUNERS``: a :class:`~mindformers.tuners.tuner_layer.TunerMethod` per method folder).

Adapter weights are kept in the model under PEFT's in-memory names (``<module>.<slot>.<adapter>...``, e.g.
``<module>.lora_A.<adapter>.weight``) and converted at the file boundary:
- PEFT files (``adapter_model.safetensors``): ``base_model.model.<module>.<slot>...`` without the adapter name
  (``<module>.lora_A.weight``); a method's ``vector_slots`` end at the slot (``<module>.lora_magnitude_vector``,
  ``<module>.ia3_l``); modules_to_save copies ``<module>.<param>``; an adapted layer's own tensors sit under
  ``base_layer``.
- SWIFT files: the in-memory names, one sub-folder per adapter.
"""
import contextlib
import os
import re
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops
from safetensors.numpy import save_file

from ..checkpoint.checks import non_float_tensors, nonfinite_tensors
from ..checkpoint.safetensors_dir import _read_file
from ..registry import TUNERS
from ..utils import EXECUTION_LOCK, atomic_path, logger, write_parameter
from .config import CONFIG_NAME, WEIGHTS_NAME, TunerConfig
from .modules_to_save import ModulesToSaveWrapper
from .tuner_layer import AdapterState, TunerLayer, TunerMethod, rename_parameters, replace_module

PEFT_PREFIX = "base_model.model."
METHOD_STATE_NAME = "method_state.safetensors"  # beside a training checkpoint's adapter file
MODULES_TO_SAVE = "modules_to_save"


def methods() -> List[TunerMethod]:
    """Every registered tuner method."""
    return [TUNERS.get(name) for name in TUNERS.names()]


def adapter_slots() -> Tuple[str, ...]:
    """The attribute names under which any method keeps adapter tensors (plus modules_to_save copies)."""
    return tuple(slot for method in methods() for slot in method.slots) + (MODULES_TO_SAVE,)


def _slot_of(part: str, slots: Tuple[str, ...]) -> bool:
    return part in slots or any(s.endswith("_") and part.startswith(s) for s in slots)


def is_adapter_path(path: str) -> bool:
    """Whether a parameter path belongs to an adapter (its factors, vectors, modules or saved copies)."""
    slots = adapter_slots()
    return any(_slot_of(part, slots) for part in path.split("."))


def method_layers(model: nn.Cell) -> Dict[str, TunerLayer]:
    """Module path -> layer of every method's tuner layer in ``model`` (modules_to_save copies excluded)."""
    return {name: cell for name, cell in model.cells_and_names()
            if isinstance(cell, TunerLayer) and not isinstance(cell, ModulesToSaveWrapper)}


def unload_layers(model: nn.Cell) -> None:
    """Replace every tuner layer by the plain layer holding its (merged or not) base Parameters."""
    for path, cell in list(model.cells_and_names()):
        if isinstance(cell, ModulesToSaveWrapper):
            replace_module(model, path, cell.unwrap())
    for path, layer in method_layers(model).items():
        replace_module(model, path, layer.unwrap())
    rename_parameters(model)


def adapter_state(model: nn.Cell, name: str, config: TunerConfig) -> Dict[str, Tensor]:
    """In-memory path -> Parameter of what adapter ``name`` trains and saves: its tensors, copies and biases
    (and its fixed tensors in ``frozen_slots``, when the method saves them)."""
    method = TUNERS.get(config.peft_type)
    if method.trains_base:  # the model's own weights are what it trains
        return {path: param for path, param in model.parameters_and_names() if not is_adapter_path(path)}
    if method.owned is not None:  # layers of its own (LLaMA-Pro's blocks)
        owned = method.owned(model, name)
        return {path: param for path, param in model.parameters_and_names() if path in owned}
    out = {}
    slots = adapter_slots()
    adapted = set(method_layers(model))
    unsaved = () if method.saves_frozen is None or method.saves_frozen(config) else method.frozen_slots
    for path, param in model.parameters_and_names():
        parts = path.split(".")
        if any(part in unsaved for part in parts):
            continue
        if any(parts[i] in slots and parts[i + 1] == name for i in range(len(parts) - 1)) or \
                any(f"{s}{name}" in parts for s in slots if s.endswith("_")):
            out[path] = param
        elif path.endswith(".bias") and getattr(config, "bias", "none") != "none" and not is_adapter_path(path):
            module = path[: -len(".bias")]
            if config.bias == "all" or module in adapted:
                out[path] = param
    return out


def saved_paths(model: nn.Cell, name: str, config: TunerConfig, peft_keys: bool) -> Dict[str, str]:
    """File key -> parameter path of what adapter ``name``'s file holds (PEFT or SWIFT keys). With PEFT keys,
    base tensors a layer says PEFT saves beside the adapter (``peft_saved_base``: an adapted embedding's
    table) are included too."""
    paths = list(adapter_state(model, name, config))
    if not peft_keys:
        return {p: p for p in paths}
    layers = method_layers(model)
    paths += [f"{m}.{leaf}" for m, layer in layers.items() if name in layer.adapter_names
              for leaf in getattr(layer, "peft_saved_base", ())]
    keys = {key: path for path, key in peft_key_map(paths, name, set(layers)).items()}
    if _is_prompt_learning(config):
        # PEFT's prompt-learning model holds the base model itself (no tuner model between), so the modules it
        # saves beside the prompt (a classifier head in modules_to_save) are base_model.<module>.<param>
        keys = {("base_model." + k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k): p for k, p in keys.items()}
    return keys


def _is_prompt_learning(config: TunerConfig) -> bool:
    from .prompt_learning import PromptLearningConfig

    return isinstance(config, PromptLearningConfig)


def peft_key_map(paths: Iterable[str], name: str, adapted_modules: set) -> Dict[str, str]:
    """Parameter path -> PEFT file key; an adapted layer's own tensors sit under ``base_layer`` there."""
    out = {}
    for path in paths:
        module, _, leaf = path.rpartition(".")
        if module in adapted_modules and leaf in ("weight", "bias"):
            out[path] = f"{PEFT_PREFIX}{module}.base_layer.{leaf}"
        else:
            out[path] = to_peft_key(path, name)
    return out


def adapted_modules_in(keys: Iterable[str], name: str) -> set:
    """Modules that hold tensors of adapter ``name``, read off SWIFT file keys."""
    slots = "|".join(re.escape(s) for s in adapter_slots() if s != MODULES_TO_SAVE)
    pattern = re.compile(rf"(.*?)\.({slots})\.{re.escape(name)}\.")
    return {m.group(1) for m in map(pattern.match, keys) if m}


def to_peft_key(path: str, name: str) -> str:
    """``model.layers.0.q_proj.lora_A.default.weight`` -> ``base_model.model.model.layers.0.q_proj.lora_A.weight``."""
    for method in methods():
        special = method.file_key(path, name) if method.file_key is not None else None
        if special is not None:
            return special
    key = path.replace(f".{MODULES_TO_SAVE}.{name}.", ".")
    for method in methods():
        for slot in method.vector_slots:
            key = re.sub(rf"\.{re.escape(slot)}\.{re.escape(name)}\.weight$", f".{slot}", key)
        for slot in method.slots:
            key = key.replace(f".{slot}.{name}.", f".{slot}.")
    return PEFT_PREFIX + key


def _memory() -> str:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
        return f"{rss / 2 ** 20:.2f} GiB (process RSS)"
    except (OSError, StopIteration):
        return "unknown"


class TunerModel(nn.Cell):
    """Wraps ``model`` and its adapters; ``model(...)`` and ``generate(...)`` run through the active ones.

    Args:
        model: a model from this package (a causal LM or a classifier).
        configs: adapter name -> config, injected in order.
        seed: seed for the adapters' initial weights.
    """

    def __init__(self, model: nn.Cell, configs: Dict[str, TunerConfig], seed: Optional[int] = None):
        super().__init__()
        if isinstance(model, TunerModel):
            raise TypeError("model already has adapters; add more with add_adapter/prepare_model on the wrapper")
        self.base_model = model
        state = getattr(model, "_adapter_state", None) or AdapterState()
        object.__setattr__(model, "_adapter_state", state)
        object.__setattr__(self, "state", state)
        self.peft_config: Dict[str, TunerConfig] = {}
        self._offloaded: Dict[str, Tuple[str, Optional[Dict[str, np.ndarray]]]] = {}
        self._sources: Dict[str, str] = {}
        self._saving: Optional[Dict[str, np.ndarray]] = None  # see saving_tensors
        self.method_state: Dict[str, object] = {}  # adapter -> what its method's after_step keeps between steps
        self._step_gradients: Optional[Tuple[List[str], nn.Cell]] = None  # see keep_step_gradients
        for name, config in configs.items():
            self.add_adapter(name, config, seed=seed)

    # ------------------------------------------------------------------ running
    def __call__(self, *args, **kwargs):
        with EXECUTION_LOCK:  # see mindformers.utils.EXECUTION_LOCK
            return super().__call__(*args, **kwargs)

    def construct(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        """``generate`` of the base model, with the active adapters."""
        return self.base_model.generate(*args, **kwargs)

    def get_base_model(self) -> nn.Cell:
        return self.base_model

    @property
    def config(self):
        return self.base_model.config

    @property
    def task(self) -> str:
        return self.base_model.task

    # ------------------------------------------------------------------ adapters
    def _check_name(self, name: str) -> None:
        if name not in self.peft_config:
            raise ValueError(f"unknown adapter {name!r}; adapters: {sorted(self.peft_config)}")

    def add_adapter(self, name: str, config: TunerConfig, seed: Optional[int] = None) -> None:
        """Inject a new adapter (inactive until activated, except the first one)."""
        if not isinstance(config, TunerConfig):
            raise TypeError(f"unsupported tuner config {type(config).__name__}; expected a config of one of "
                            f"the registered tuner types {TUNERS.names()} (e.g. LoraConfig)")
        if name in self.peft_config:
            raise ValueError(f"an adapter called {name!r} already exists; adapters: {sorted(self.peft_config)}")
        model = self.base_model
        TUNERS.get(config.peft_type).inject(model, config, name, self.state, seed)
        if getattr(config, "modules_to_save", None):
            self._wrap_modules_to_save(config.modules_to_save, name)
        rename_parameters(model)
        self.peft_config[name] = config
        self.state.version += 1
        if not self.state.active():
            self.state.set_active([name])
        self._update_trainable()

    def _wrap_modules_to_save(self, modules: List[str], name: str) -> None:
        model = self.base_model
        found = sorted({p for p, _ in model.cells_and_names() for m in modules
                        if (p == m or p.endswith("." + m)) and not is_adapter_path(p)})
        if not found:  # PEFT lists "classifier" and "score" for every classifier; one of them must exist
            raise ValueError(f"modules_to_save {modules} match no module of {type(model).__name__}")
        for path in found:
            cell = dict(model.cells_and_names())[path]
            if not isinstance(cell, ModulesToSaveWrapper):
                cell = ModulesToSaveWrapper(cell, self.state)
                replace_module(model, path, cell)
            cell.add_adapter(name)

    def tuner_layers(self) -> Dict[str, TunerLayer]:
        """Every tuner layer of the model, modules_to_save copies included."""
        return {n: c for n, c in self.base_model.cells_and_names() if isinstance(c, TunerLayer)}

    def delete_adapter(self, name: str) -> None:
        """Remove adapter ``name`` and its weights."""
        self._check_name(name)
        for layer in self.tuner_layers().values():
            if name in layer.adapter_names:
                layer.delete_adapter(name)
        del self.peft_config[name]
        self.method_state.pop(name, None)
        self.state.version += 1
        self.state.set_active([n for n in self.state.active() if n != name])
        self._update_trainable()

    @property
    def active_adapters(self) -> List[str]:
        return list(self.state.active())

    @property
    def active_adapter(self) -> Optional[str]:
        active = self.state.active()
        return active[0] if active else None

    def set_adapter(self, names: Union[str, List[str]]) -> None:
        """Make exactly ``names`` active (for the calling thread only when USE_UNIQUE_THREAD=0)."""
        names = [names] if isinstance(names, str) else list(names)
        for name in names:
            self._check_name(name)
            if name in self._offloaded:
                self._restore(name)
        self.state.set_active(names)
        self._update_trainable()

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the base model alone inside the ``with`` block."""
        with self.state.disabled():
            yield

    def add_weighted_adapter(self, adapters: List[str], weights: List[float], adapter_name: str,
                             combination_type: str = "svd", svd_rank: Optional[int] = None) -> None:
        """A new adapter combining ``adapters`` (PEFT's ``add_weighted_adapter``: linear, cat or svd)."""
        from .lora.weighted import add_weighted_adapter

        for name in adapters:
            self._check_name(name)
            if self.peft_config[name].peft_type != "LORA":
                raise ValueError(f"add_weighted_adapter combines LoRA adapters; {name!r} is a "
                                 f"{self.peft_config[name].peft_type} adapter")
        add_weighted_adapter(self, adapters, weights, adapter_name, combination_type, svd_rank)

    # ------------------------------------------------------------------ trainability
    def _update_trainable(self) -> None:
        """Freeze the base; train the adapters of non-inference configs (and their biases / copies), never the
        tensors of a method's ``frozen_slots``."""
        trainable = set()
        frozen = {slot for method in methods() for slot in method.frozen_slots}
        for name, config in self.peft_config.items():
            if not config.inference_mode:
                trainable |= {path for path in adapter_state(self.base_model, name, config)
                              if not frozen.intersection(path.split("."))}
        for path, param in self.base_model.parameters_and_names():
            param.requires_grad = path in trainable

    def get_nb_trainable_parameters(self) -> Tuple[int, int]:
        """(trainable parameters, all parameters)."""
        params = list(self.base_model.get_parameters())
        total = sum(int(np.prod(p.shape)) for p in params)
        trainable = sum(int(np.prod(p.shape)) for p in params if p.requires_grad)
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    def get_trainable_parameters(self) -> str:
        """SWIFT's summary line, with this process's memory."""
        trainable, total = self.get_nb_trainable_parameters()
        return (f"trainable params: {trainable / 1e6:.4f}M || all params: {total / 1e6:.4f}M || "
                f"trainable%: {100 * trainable / total:.4f}% || memory: {_memory()}")

    # ------------------------------------------------------------------ merging
    def merge_adapter(self, adapter_names: Optional[List[str]] = None) -> None:
        """Fold the given (default: active) adapters into the base weights; they keep existing."""
        names = list(adapter_names) if adapter_names is not None else list(self.state.active())
        for name in names:
            self._check_name(name)
            kind = self.peft_config[name].peft_type
            method = TUNERS.get(kind)
            if not method.mergeable:
                mergeable = [m.peft_type for m in methods() if m.mergeable]
                raise ValueError(f"adapter {name!r} is a {kind} tuner, which cannot be merged into the weights"
                                 f"{' (' + method.merge_refusal + ')' if method.merge_refusal else ''}; "
                                 f"mergeable types: {mergeable}")
        for layer in self.tuner_layers().values():
            layer.merge(names)
        self.state.version += 1

    def unmerge_adapter(self) -> None:
        """Take every merged adapter back out of the base weights."""
        for layer in self.tuner_layers().values():
            layer.unmerge()
        self.state.version += 1

    def merge_and_unload(self, adapter_names: Optional[List[str]] = None) -> nn.Cell:
        """Merge adapters into the weights and return the plain base model (no LoRA layers left)."""
        self.merge_adapter(adapter_names)
        return self.unload()

    def unload(self) -> nn.Cell:
        """Remove every tuner layer (unmerged adapters are dropped) and return the base model."""
        model = self.base_model
        unload_layers(model)
        object.__setattr__(model, "_adapter_state", None)
        for param in model.get_parameters():
            param.requires_grad = True
        self.peft_config = {}
        return model

    # ------------------------------------------------------------------ weights in and out
    def adapter_weights(self, name: str, peft_keys: bool) -> Dict[str, np.ndarray]:
        """Adapter ``name``'s tensors with PEFT file keys or SWIFT (in-memory) keys."""
        self._check_name(name)
        if self._saving is not None:
            tensors = self._saving
        else:
            tensors = {path: param.asnumpy() for path, param in self.base_model.parameters_and_names()}
        out = {k: tensors[p] for k, p in saved_paths(self.base_model, name, self.peft_config[name], peft_keys).items()}
        method = TUNERS.get(self.peft_config[name].peft_type)
        if peft_keys and method.export is not None:
            out = method.export(self.base_model, name, out)
        return out

    @contextlib.contextmanager
    def saving_tensors(self, tensors: Dict[str, np.ndarray]) -> Iterator[None]:
        """Inside the block, saving writes ``tensors`` (parameter path -> array) instead of the live Parameters:
        the whole tensors a tensor-parallel run gathered from its slices."""
        self._saving = tensors
        try:
            yield
        finally:
            self._saving = None

    def load_adapter_weights(self, name: str, weights: Dict[str, np.ndarray], peft_keys: bool, source: str) -> None:
        """Copy saved tensors into adapter ``name``; every tensor must fit exactly."""
        params = dict(self.base_model.parameters_and_names())
        by_key = {k: params[p] for k, p in saved_paths(self.base_model, name, self.peft_config[name], peft_keys).items()}
        missing = sorted(set(by_key) - set(weights))
        unexpected = sorted(set(weights) - set(by_key))
        wrong = [f"{k}: file {tuple(weights[k].shape)} vs model {tuple(by_key[k].shape)}"
                 for k in sorted(set(weights) & set(by_key)) if tuple(weights[k].shape) != tuple(by_key[k].shape)]
        if missing or unexpected or wrong:
            parts = [f"{label} {len(items)}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
                     for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if items]
            raise ValueError(f"{source} does not fit adapter {name!r} of {type(self.base_model).__name__}: "
                             + "; ".join(parts) + ". Was it trained for another base model or config?")
        bad = non_float_tensors(weights) + nonfinite_tensors(weights)
        if bad:
            raise ValueError(f"{source}: adapter weights must be finite floating-point numbers; found "
                             f"{'; '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} (was the adapter saved after "
                             "training diverged?)")
        for key, param in by_key.items():
            write_parameter(param, weights[key].astype(np.float32))

    def checkpoint_layout(self, name: str) -> bool:
        """Whether a training checkpoint keeps adapter ``name`` with PEFT's keys (methods PEFT has) or SWIFT's
        (the others, and methods whose PEFT file is not their whole state, e.g. p-tuning's encoder)."""
        method = TUNERS.get(self.peft_config[name].peft_type)
        return method.peft_format and method.export is None

    def save_checkpoint_adapters(self, directory: str) -> None:
        """Every adapter into a training checkpoint folder: ``default`` at the top, others in sub-folders;
        PEFT's layout for methods PEFT has, SWIFT's keys for the others."""
        for name in self.peft_config:
            target = directory if name == "default" else os.path.join(directory, name)
            self._save_adapter(target, name, peft_keys=self.checkpoint_layout(name))
            method = TUNERS.get(self.peft_config[name].peft_type)
            state = method.checkpoint_state(self, name) if method.checkpoint_state is not None else None
            if state:  # what the method carries between steps (TunerMethod.checkpoint_state)
                with atomic_path(os.path.join(target, METHOD_STATE_NAME)) as tmp:
                    save_file(state, tmp)

    def restore_checkpoint_state(self, name: str, directory: str) -> None:
        """Put back what :meth:`save_checkpoint_adapters` kept of adapter ``name``'s method state (nothing when
        the checkpoint has none)."""
        path = os.path.join(directory, METHOD_STATE_NAME)
        method = TUNERS.get(self.peft_config[name].peft_type)
        if method.restore_state is not None and os.path.isfile(path):
            method.restore_state(self, name, _read_file(path))

    def _save_adapter(self, directory: str, name: str, peft_keys: bool) -> None:
        config = self.peft_config[name]
        if peft_keys and not TUNERS.get(config.peft_type).peft_format:
            raise ValueError(f"adapter {name!r} is a {config.peft_type} tuner, which PEFT does not have; save it in "
                             "SWIFT's layout (Swift.prepare_model(...).save_pretrained)")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, WEIGHTS_NAME)
        with atomic_path(path) as tmp:
            save_file(self.adapter_weights(name, peft_keys), tmp, metadata={"format": "pt"})
        config.save_pretrained(directory)

    def _load_adapter_dir(self, directory: str, name: str, config: TunerConfig, peft_keys: bool) -> None:
        path = os.path.join(directory, WEIGHTS_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory} (found: {sorted(os.listdir(directory))})")
        self.add_adapter(name, config)
        try:
            self.load_adapter_weights(name, _read_file(path), peft_keys, path)
        except ValueError:
            self.delete_adapter(name)
            raise
        self._sources[name] = directory

    # ------------------------------------------------------------------ offloading (SWIFT)
    def _offload(self, name: str, offload: Optional[str]) -> None:
        if offload is None:
            return
        if offload not in ("cpu", "meta"):
            raise ValueError(f"offload must be None, 'cpu' or 'meta', found {offload!r}")
        if offload == "meta" and name not in self._sources:
            raise ValueError(f"adapter {name!r} was not loaded from a directory, so offload='meta' would lose it; "
                             "save it first or offload to 'cpu'")
        kept = self.adapter_weights(name, peft_keys=False) if offload == "cpu" else None
        config = self.peft_config[name]
        source = self._sources.get(name)
        self.delete_adapter(name)
        self.peft_config[name] = config  # known, but its weights are out of the layers
        self._offloaded[name] = (source, kept)

    def _restore(self, name: str) -> None:
        source, kept = self._offloaded.pop(name)
        config = self.peft_config.pop(name)
        if kept is not None:
            self.add_adapter(name, config)
            self.load_adapter_weights(name, kept, peft_keys=False, source=f"the offloaded copy of {name!r}")
        else:
            self._load_adapter_dir(source, name, config, peft_keys=not _is_swift_dir(source))
        logger.info("adapter %r restored from its %s offload", name, "cpu" if kept is not None else "meta")

    # ------------------------------------------------------------------ training hooks of methods
    def _training_methods(self) -> List[Tuple[str, TunerConfig, TunerMethod]]:
        return [(name, config, TUNERS.get(config.peft_type)) for name, config in self.peft_config.items()
                if not config.inference_mode and name not in self._offloaded]

    def training_regulariser(self) -> Optional[nn.Cell]:
        """A Cell whose call (no arguments) gives what the training adapters' methods add to the training loss
        (``TunerMethod.regulariser``), or None when no method adds anything."""
        terms = [method.regulariser(self.base_model, config, name)
                 for name, config, method in self._training_methods() if method.regulariser is not None]
        return _SumOf(terms) if terms else None

    def keep_step_gradients(self, optimizer: nn.Cell) -> nn.Cell:
        """``optimizer`` wrapped so that every call also copies the gradients it applies to the parameters of
        adapters whose method has an ``after_step`` hook into Parameters outside the model, which
        :meth:`after_optimizer_step` reads; ``optimizer`` itself when no method needs them."""
        paths = [path for name, config, method in self._training_methods() if method.after_step is not None
                 for path in adapter_state(self.base_model, name, config)]
        if not paths:
            self._step_gradients = None
            return optimizer
        index = {param.name: i for i, param in enumerate(optimizer.parameters)}
        missing = [path for path in paths if path not in index]
        if missing:
            raise ValueError(f"the tuner's after_step hooks read the gradients of {missing[:3]}, which the optimizer "
                             "does not train; build the optimizer after adding the adapters")
        params = dict(self.base_model.parameters_and_names())
        keeper = _KeepGradients(optimizer, [index[path] for path in paths], [params[path] for path in paths])
        self._step_gradients = (paths, keeper)
        return keeper

    def after_optimizer_step(self, step: int) -> None:
        """Hand the gradients of the step just taken (``step``: its 0-based index) to the methods' ``after_step``
        hooks; nothing unless :meth:`keep_step_gradients` wrapped the optimizer that took it."""
        if self._step_gradients is None:
            return
        paths, keeper = self._step_gradients
        grads = {path: kept.asnumpy() for path, kept in zip(paths, keeper.kept)}
        for name, config, method in self._training_methods():
            if method.after_step is not None:
                method.after_step(self, name, {p: grads[p] for p in adapter_state(self.base_model, name, config)}, step)


class _SumOf(nn.Cell):
    """The sum of Cells called without arguments. The terms refer to the model's own layers, so they are held
    without renaming their Parameters (``auto_prefix=False``)."""

    def __init__(self, terms: List[nn.Cell]):
        super().__init__(auto_prefix=False)
        self.terms = nn.CellList(terms, auto_prefix=False)

    def construct(self):
        total = self.terms[0]()
        for term in self.terms[1:]:
            total = total + term()
        return total


class _KeepGradients(nn.Cell):
    """An optimizer that also copies the gradients at ``indices`` into ``kept`` (one Parameter per gradient, never
    trained or saved), inside the compiled step."""

    def __init__(self, optimizer: nn.Cell, indices: List[int], like: List[Tensor]):
        super().__init__(auto_prefix=False)
        self.optimizer = optimizer
        self.indices = tuple(indices)
        self.kept = ParameterTuple(Parameter(Tensor(np.zeros(p.shape, np.float32)), name=f"step_gradient.{i}",
                                             requires_grad=False) for i, p in zip(indices, like))

    def construct(self, grads, *args):
        for slot, i in enumerate(self.indices):
            ops.assign(self.kept[slot], grads[i])
        return self.optimizer(grads, *args)


def _is_swift_dir(directory: str) -> bool:
    from .config import read_config_file

    return "swift_type" in read_config_file(directory)


def iter_adapter_dirs(root: str) -> Iterable[Tuple[str, str]]:
    """(adapter name, directory) of every adapter folder directly under ``root``."""
    for entry in sorted(os.listdir(root)):
        if os.path.isfile(os.path.join(root, entry, CONFIG_NAME)):
            yield entry, os.path.join(root, entry)
