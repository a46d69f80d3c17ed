"""What every tuner layer shares: adapters kept by name, and which of them are active.

Several adapters live in one layer at once (weights in ``nn.CellDict``s keyed by adapter name, as PEFT
keeps them in ``ModuleDict``s). Which ones run is decided by an :class:`AdapterState` shared by all layers
of a model: global by default, or per thread when the environment variable ``USE_UNIQUE_THREAD`` is
``"0"`` (SWIFT's switch), so one model object can serve threads that each use other adapters.

Compiled graphs (``mindspore.jit``) read the active set when they are compiled; :meth:`AdapterState.key`
lets the caller compile one graph per set (see ``GenerationMixin._decode_step_for``).
"""
import contextlib
import dataclasses
import os
import threading
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple


def replace_module(model, path: str, new) -> None:
    """Set the sub-cell at dotted ``path`` (list indices included) to ``new``."""
    from mindspore import nn

    parent_path, _, attr = path.rpartition(".")
    parent = model
    for part in parent_path.split(".") if parent_path else []:
        parent = parent._cells[part]  # pylint: disable=protected-access
    if isinstance(parent, nn.CellList):
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)


def rename_parameters(model) -> None:
    """Give every Parameter its path as name. Cells inserted after construction get short names that
    clash between layers, which compiled graphs and optimizers refuse (docs/mindspore_cpu.md)."""
    for path, param in model.parameters_and_names():
        param.name = path


class AdapterState:
    """The active adapters of one model, global or per thread."""

    def __init__(self):
        self.per_thread = os.environ.get("USE_UNIQUE_THREAD", "1") == "0"
        self._global: Tuple[str, ...] = ()
        self._local = threading.local()
        self.version = 0  # bumped when adapters are added, removed, merged or unmerged

    def key(self) -> Tuple:
        """Identifies what a compiled graph baked in: the active adapters and the layer structure."""
        return self.active(), self.version

    def active(self) -> Tuple[str, ...]:
        """Adapters active for the calling thread."""
        if self.per_thread:
            names = getattr(self._local, "names", None)
            if names is not None:
                return names
        return self._global

    def set_active(self, names: Iterable[str]) -> None:
        """Make exactly ``names`` active (for this thread only when per-thread)."""
        names = tuple(dict.fromkeys(names))
        if self.per_thread:
            self._local.names = names
        else:
            self._global = names

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the base model alone inside the block (for this thread only when per-thread)."""
        previous = self.active()
        self.set_active(())
        try:
            yield
        finally:
            self.set_active(previous)


class TunerLayer:
    """Mixin of layers that hold adapters. Subclasses keep ``adapter_names`` and ``merged_adapters``."""

    adapter_names: List[str]
    merged_adapters: List[str]

    def _init_tuner_layer(self, state: AdapterState) -> None:
        object.__setattr__(self, "_adapter_state", state)  # shared, not a sub-cell
        self.adapter_names = []
        self.merged_adapters = []

    def running_adapters(self) -> Tuple[str, ...]:
        """Active adapters of this layer that are not merged into the base weights."""
        return tuple(n for n in self._adapter_state.active() if n in self.adapter_names and n not in self.merged_adapters)

    def delete_adapter(self, name: str) -> None:
        raise NotImplementedError

    def merge(self, names: Iterable[str]) -> None:
        raise NotImplementedError

    def unmerge(self) -> None:
        raise NotImplementedError


class Unmergeable(TunerLayer):
    """A tuner layer whose adapters have no form in the weights: merging one of them is refused with
    ``merge_refusal`` (other methods' adapters in the model may still merge); unmerging does nothing."""

    merge_refusal = "it cannot be merged into the weights"

    def merge(self, names: Iterable[str]) -> None:
        if any(name in self.adapter_names for name in names):
            raise ValueError(f"{type(self).__name__}: {self.merge_refusal}")

    def unmerge(self) -> None:
        return None


class SwappedClass(Unmergeable):
    """Mixed into a module whose class a tuner swapped for a subclass running its adapters (SWIFT patches the
    module's forward the same way): the subclass keeps the original as ``_original_class``; unwrapping deletes
    the adapters and gives the module its class back."""

    _original_class: type

    def unwrap(self):
        for name in list(self.adapter_names):
            self.delete_adapter(name)
        self.__class__ = self._original_class
        return self


class UnmergeableEmbedding(Unmergeable):
    """A tuner layer on an Embedding that adds nothing to its table (prompt learning, NEFTune); unwrapping
    gives the Embedding back with the same table."""

    def unwrap(self):
        from ..models.common.layers import Embedding

        base = Embedding(*self.weight.shape, self.weight.dtype)
        base.weight = self.weight
        return base


@dataclasses.dataclass(frozen=True)
class TunerMethod:
    """What the shared tuner core needs from a method (what PEFT's ``BaseTuner`` subclasses declare); each
    method folder registers one in ``TUNERS``, and nothing outside the folder names the method.

    Attributes:
        peft_type: PEFT's name of the method ("LORA"), the registry key.
        config_class: its config dataclass (SWIFT files may use ``swift_config_class``).
        inject: ``inject(model, config, adapter_name, state, seed)`` adds the adapter's layers.
        mergeable: whether the adapter can be folded into the base weights.
        swift_config_class: the config class for SWIFT files (defaults to ``config_class``).
        slots: the attribute names under which its layers keep each adapter's tensors
            (``<module>.<slot>.<adapter>...``, PEFT's ``adapter_layer_names``); a path through a slot is an
            adapter tensor, and a PEFT file key drops the adapter name after it.
        vector_slots: the slots PEFT keeps as one Parameter per adapter (``ParameterDict``): the file key ends
            at the slot (``<module>.ia3_l``), while ours reads ``<module>.ia3_l.<adapter>.weight``.
        default_targets: ``model_type`` -> target_modules when a config gives none (PEFT's per-architecture
            tables; families it has none for are named in the error).
        pet_names: MindFormers' ``pet_type`` spellings that select the method from a model config
            (lower case; the PEFT type itself always works).
        merge_refusal: why the method cannot merge (said when merging is asked for).
        peft_format: whether PEFT has the method (False: a SWIFT tuner, saved only in SWIFT's layout).
        file_key: ``file_key(path, adapter)`` -> the PEFT file key of a path where the method departs from the
            slot rule (prompt learning saves ``prompt_embeddings`` without a module path), else None.
        export: ``export(model, adapter, {file key: array})`` -> what a PEFT file holds, where it is not the
            adapter's Parameters (p-tuning saves its encoder's output, not the encoder).
        regulariser: ``regulariser(model, config, adapter)`` -> a Cell called without arguments inside the
            compiled training step, whose scalar is added to the training loss (AdaLoRA's orthogonality
            penalty); only for adapters that train.
        after_step: ``after_step(tuner, adapter, grads, step)``, called by the Trainer after every optimizer
            step of a training adapter with ``grads`` (parameter path -> array: the adapter's gradients as the
            optimizer applied them, averaged and clipped) and ``step`` (0-based index of that step), as PEFT's
            training loops call ``update_and_allocate`` between ``optimizer.step()`` and ``zero_grad()``.
            State kept between calls goes in ``tuner.method_state[adapter]``.
        checkpoint_state: ``checkpoint_state(tuner, adapter)`` -> {name: array}, what a training checkpoint keeps
            of that state so a resumed run continues exactly (AdaLoRA's importance averages and rank pattern);
            ``restore_state(tuner, adapter, arrays)`` puts it back when resuming.
        trains_base: the method trains (and saves) the model's own weights rather than added ones (SWIFT's
            NEFTune, which only perturbs the embeddings while the model trains in full).
        owned: ``owned(model, adapter)`` -> the parameter paths that are the adapter's state, for methods whose
            tensors are model layers of their own (LLaMA-Pro's new blocks) rather than slots.
        frozen_slots: slots (among ``slots``) holding fixed tensors that are never trained (VeRA's shared random
            projections, which PEFT keeps as buffers).
        saves_frozen: ``saves_frozen(config)`` -> whether the frozen slots are part of the adapter's file (VeRA's
            ``save_projection``; False: they are rebuilt from the config when loading); None: always.

    A slot ending in ``_`` is a prefix: SWIFT's ``<module>.adapter_<adapter>...`` attributes.
    """

    peft_type: str
    config_class: type
    inject: Callable
    mergeable: bool
    swift_config_class: Optional[type] = None
    slots: Tuple[str, ...] = ()
    vector_slots: Tuple[str, ...] = ()
    default_targets: Dict[str, Tuple[str, ...]] = dataclasses.field(default_factory=dict)
    pet_names: Tuple[str, ...] = ()
    merge_refusal: str = ""
    peft_format: bool = True
    file_key: Optional[Callable] = None
    regulariser: Optional[Callable] = None
    after_step: Optional[Callable] = None
    checkpoint_state: Optional[Callable] = None
    restore_state: Optional[Callable] = None
    export: Optional[Callable] = None
    trains_base: bool = False
    owned: Optional[Callable] = None
    frozen_slots: Tuple[str, ...] = ()
    saves_frozen: Optional[Callable] = None

    def targets_for(self, model) -> List[str]:
        """The default target_modules of ``model``'s family for this method."""
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in self.default_targets:
            raise ValueError(f"no default {self.peft_type} targets for {type(model).__name__} (model_type "
                             f"{model_type!r}; defaults exist for {sorted(self.default_targets)}); set target_modules")
        return list(self.default_targets[model_type])
