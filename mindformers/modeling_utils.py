"""Base class of every model: building from a config, loading and saving Hugging Face checkpoints.

Parameter names equal Hugging Face's tensor names, so loading is a checked name-by-name copy. A missing,
unexpected, wrongly shaped or non-float tensor is an error listing all of them; the only exception is a task
head that a checkpoint cannot have (``score.weight`` when a causal-LM checkpoint seeds a classifier), which is
initialised and reported, as transformers does. Weights holding NaN or infinity are refused too (a diverged
run's checkpoint); ``load_state_dict(state, check_finite=False)`` loads them anyway.
"""
import functools
import threading
from typing import Any, Dict, Iterable, Optional, Union

import numpy as np
import mindspore as ms
from mindspore import nn

from .checkpoint import save_state_dict
from .checkpoint.checks import non_float_tensors, nonfinite_tensors
from .configuration_utils import PretrainedConfig
from .models.common.layers import Conv1D, Embedding, LayerNorm, Linear, RMSNorm
from .utils import EXECUTION_LOCK, building_shapes_only, logger, thread_flag, write_parameter


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not fit the model (names, shapes or dtypes)."""


class NonFiniteWeightsError(ValueError):
    """A checkpoint's weights hold NaN or infinity."""


_CONSTRUCTION = threading.local()  # depth of nested model __init__ calls, and whether weights are filled after


def _weights_filled_by_caller():
    """Inside, constructing a model leaves its placeholder weights (the caller fills them)."""
    return thread_flag(_CONSTRUCTION, "skip")


def _initialise_after(init):
    """Wrap a model class's ``__init__`` so that ``Model(config)`` ends with random weights, as MindFormers'
    and transformers' ``Model(config)`` do (only the outermost ``__init__`` of the chain fills them)."""

    @functools.wraps(init)
    def wrapped(self, *args, **kwargs):
        _CONSTRUCTION.depth = getattr(_CONSTRUCTION, "depth", 0) + 1
        try:
            init(self, *args, **kwargs)
        finally:
            _CONSTRUCTION.depth -= 1
        if _CONSTRUCTION.depth == 0 and not getattr(_CONSTRUCTION, "skip", False):
            self.init_weights()

    return wrapped


class PreTrainedModel(nn.Cell):
    """A model built from a :class:`PretrainedConfig`, with Hugging Face checkpoint I/O.

    Subclasses set ``config_class``, ``base_model_prefix`` (``"model"``, ``"transformer"``) and ``task``
    (``"causal_lm"``, ``"sequence_classification"``, ``"token_classification"``, ``"question_answering"`` or
    ``"feature_extraction"``).
    """

    config_class = PretrainedConfig
    base_model_prefix = ""
    task = ""
    # Tensors a checkpoint of another task may lack; initialised (with a warning) instead of failing.
    _head_keys: tuple = ()
    # Checkpoint tensors that are runtime buffers in torch (e.g. GPT-2's causal mask); dropped on load.
    _ignored_checkpoint_keys: tuple = ()
    # A table of max_position_embeddings learned positions: longer inputs are refused (rotary models extrapolate).
    learned_positions = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _initialise_after(cls.__dict__["__init__"])

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        if config.dtype == "bfloat16" and ms.get_context("device_target") == "CPU" and not building_shapes_only():
            raise ValueError("dtype bfloat16 has no matmul kernel on MindSpore's CPU backend; use float32 (or float16)")
        self.config = config

    def __call__(self, *args, **kwargs):
        if self.learned_positions:
            ids = args[0] if args else kwargs.get("input_ids")
            length = getattr(ids, "shape", (0, 0))[-1]
            if length > self.config.max_position_embeddings:
                raise ValueError(f"input of {length} tokens is longer than the {self.config.max_position_embeddings} "
                                 f"positions {type(self).__name__} has (max_position_embeddings / seq_length)")
        with EXECUTION_LOCK:  # see mindformers.utils.EXECUTION_LOCK
            return super().__call__(*args, **kwargs)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: PretrainedConfig, seed: Optional[int] = None) -> "PreTrainedModel":
        """A randomly initialised model (normal(0, ``initializer_range``) weights, as transformers does).

        Args:
            config: the model config.
            seed: seed of the numpy generator used for the weights (None: nondeterministic).
        """
        with _weights_filled_by_caller():
            model = cls(config)
        model.init_weights(seed)
        model.apply_pet_config()
        return model

    def init_weights(self, seed: Optional[int] = None) -> None:
        """Fill every parameter with transformers' initialisation for its kind of layer (``Model(config)``
        does this with seed None; ``from_config(config, seed)`` with a seed)."""
        rng = np.random.default_rng(seed)
        std = self.config.initializer_range
        for _, cell in self.cells_and_names():
            if isinstance(cell, (Linear, Conv1D, Embedding)):
                _fill(cell.weight, rng.normal(0.0, std, cell.weight.shape), True)
                if getattr(cell, "bias", None) is not None:
                    _fill(cell.bias, np.zeros(cell.bias.shape), True)
            elif isinstance(cell, (RMSNorm, LayerNorm)):
                _fill(cell.weight, np.ones(cell.weight.shape), True)
                if getattr(cell, "bias", None) is not None:
                    _fill(cell.bias, np.zeros(cell.bias.shape), True)
            elif hasattr(cell, "init_parameters"):  # Parameters that are not a layer of their own (MoE experts)
                for param, value in cell.init_parameters(rng, std).items():
                    _fill(param, value, True)
        self._post_init_weights(rng)

    def _post_init_weights(self, rng: np.random.Generator) -> None:
        """Hook for family-specific initialisation (GPT-2 scales its residual projections)."""

    @classmethod
    def from_pretrained(cls, source: str, **config_overrides: Any) -> "PreTrainedModel":
        """Load a model from a preset name, a Hugging Face directory, a MindFormers YAML or a GGUF file.

        Args:
            source: where the checkpoint is (see :mod:`mindformers.auto`).
            config_overrides: config fields to change (e.g. ``num_labels=3`` for a classifier).
        """
        from .auto import _resolve, load_model  # the Auto layer owns source resolution

        config, _, checkpoint, _ = _resolve(source, config_overrides)
        if not isinstance(config, cls.config_class):
            raise TypeError(
                f"{source!r} holds a {type(config).__name__} (model_type {config.model_type!r}); "
                f"{cls.__name__} needs a {cls.config_class.__name__}"
            )
        return load_model(cls, config, checkpoint, source)

    @classmethod
    def from_state_dict(cls, config: PretrainedConfig, state: Dict[str, np.ndarray],
                        check_finite: bool = True) -> "PreTrainedModel":
        """Build a model from ``config`` and copy ``state`` (numpy arrays by HF name) into it
        (``check_finite``: see :meth:`load_state_dict`)."""
        with _weights_filled_by_caller():
            model = cls(config)
        # in_place=False: no compiled graph holds the new model's buffers yet
        missing = model._copy_state(state, strict=True, in_place=False, check_finite=check_finite)
        if missing:
            rng = np.random.default_rng()
            params = dict(model.parameters_and_names())
            for name in missing:
                init = np.zeros(params[name].shape) if name.endswith("bias") else rng.normal(0.0, config.initializer_range, params[name].shape)
                _fill(params[name], init, False)
            logger.warning("%s: newly initialised (not in the checkpoint): %s; train them before use", cls.__name__, missing)
        model.apply_pet_config()
        return model

    def apply_pet_config(self) -> None:
        """Add the tuner ``config.pet_config`` asks for (MindFormers' switch: ``{pet_type: lora, lora_rank: 8,
        lora_alpha: 16, lora_dropout: 0.05, target_modules: '.*q_proj|.*v_proj'}``; any registered method by its
        MindFormers or PEFT name), as adapter "default"."""
        if self.config.pet_config and getattr(self, "_tuner", None) is None:
            from .tuners import inject_adapter_in_model
            from .tuners.config import config_from_pet

            inject_adapter_in_model(config_from_pet(self.config.pet_config), self)

    # ------------------------------------------------------------------ state dicts
    def state_dict(self) -> Dict[str, np.ndarray]:
        """``{Hugging Face tensor name: numpy array}`` of every base-model parameter (adapter weights, if a
        tuner is attached, are not included: see :meth:`save_pretrained`)."""
        from .tuners.tuner_model import is_adapter_path

        return {name: param.asnumpy() for name, param in self.parameters_and_names() if not is_adapter_path(name)}

    def _rename_checkpoint_key(self, key: str) -> str:
        """Map a checkpoint key onto this model's names (e.g. add a missing ``transformer.`` prefix)."""
        return key

    def _is_ignored_key(self, key: str) -> bool:
        """Checkpoint tensors that are not weights of this model (dropped on load)."""
        return any(key.endswith(suffix) for suffix in self._ignored_checkpoint_keys)

    def _expert_layout(self):
        return getattr(self.config, "expert_layout", None)

    def checkpoint_state(self, state: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
        """``state`` (default :meth:`state_dict`) in the layout the family's checkpoints use (MoE experts one
        tensor each, as transformers saves them); what :meth:`save_pretrained` writes."""
        from .tuners.tuner_model import is_adapter_path

        layout = self._expert_layout()
        state = self.state_dict() if state is None else {k: v for k, v in state.items() if not is_adapter_path(k)}
        return state if layout is None else layout.split(state)

    def load_state_dict(self, state: Dict[str, np.ndarray], strict: bool = True, check_finite: bool = True) -> list:
        """Copy arrays into the parameters of the same name (in place: compiled steps see the new values).

        Args:
            state: ``{name: array}``; names are Hugging Face's.
            strict: raise :class:`CheckpointMismatchError` on missing, unexpected or mis-shaped tensors.
                Task-head tensors of ``_head_keys`` may be missing either way. Integer or boolean tensors
                are refused either way (they are not weights).
            check_finite: raise :class:`NonFiniteWeightsError` when a tensor holds NaN or +-infinity;
                False loads them as they are (to inspect a diverged run, say).
        Returns:
            The names of head parameters the checkpoint lacked (left for the caller to initialise).
        """
        return self._copy_state(state, strict, in_place=True, check_finite=check_finite)

    def _copy_state(self, state: Dict[str, np.ndarray], strict: bool, in_place: bool, check_finite: bool = True) -> list:
        params = dict(self.parameters_and_names())
        layout = self._expert_layout()
        if layout is not None:  # experts stored one by one -> the model's 3-D expert Parameters
            from .models.common.moe import fused_expert_shapes

            try:
                state = layout.fuse(state, fused_expert_shapes(self))
            except ValueError as err:
                raise CheckpointMismatchError(f"checkpoint does not fit {type(self).__name__}: {err}") from None
        renamed = {}
        for key, value in state.items():
            if self._is_ignored_key(key):
                continue
            renamed[self._rename_checkpoint_key(key)] = value
        unexpected = sorted(set(renamed) - set(params))
        # a causal-LM checkpoint seeding a classifier brings an lm_head the classifier has no use for
        if self.task != "causal_lm":
            unexpected = [k for k in unexpected if not k.startswith("lm_head.")]
        missing = sorted(set(params) - set(renamed))
        head_missing = [k for k in missing if k in self._head_keys]
        missing = [k for k in missing if k not in self._head_keys]
        wrong_shape = [
            f"{k}: checkpoint {tuple(renamed[k].shape)} vs model {tuple(params[k].shape)}"
            for k in sorted(set(renamed) & set(params))
            if tuple(renamed[k].shape) != tuple(params[k].shape)
        ]
        if strict and (missing or unexpected or wrong_shape):
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} tensor(s): {_short(missing)}")
            if unexpected:
                parts.append(f"unexpected {len(unexpected)} tensor(s): {_short(unexpected)}")
            if wrong_shape:
                parts.append(f"wrong shape for {len(wrong_shape)} tensor(s): {_short(wrong_shape)}")
            raise CheckpointMismatchError(
                f"checkpoint does not fit {type(self).__name__} ({self.config.model_type}, "
                f"{self.config.num_hidden_layers} layers, hidden {self.config.hidden_size}): " + "; ".join(parts)
                + ". Is the checkpoint for this model and config?"
            )
        loaded = {k: v for k, v in renamed.items() if k in params}
        not_float = non_float_tensors(loaded)
        if not_float:
            raise CheckpointMismatchError(
                f"checkpoint tensors must be floating point (the model's weights are {self.config.dtype}); found "
                f"{len(not_float)} that are not: {_short(not_float)}. Is this file a model checkpoint?"
            )
        nonfinite = nonfinite_tensors(loaded) if check_finite else []
        if nonfinite:
            raise NonFiniteWeightsError(
                f"checkpoint weights hold NaN or infinite values in {len(nonfinite)} tensor(s): {_short(nonfinite)}; "
                "a model with them gives NaN outputs (was the checkpoint saved after training diverged?). To load "
                "it anyway: model.load_state_dict(mindformers.checkpoint.load_state_dict(path), check_finite=False)"
            )
        for key, value in renamed.items():
            if key in params and tuple(value.shape) == tuple(params[key].shape):
                _fill(params[key], value, in_place)
        return head_missing

    def save_pretrained(self, save_directory: str, max_shard_size: Union[int, str] = "5GB",
                        state: Optional[Dict[str, np.ndarray]] = None) -> None:
        """Write ``config.json`` and safetensors weights in Hugging Face's layout and tensor names.

        Tied output embeddings are not written (transformers re-ties them on load). Each file is written
        atomically; a sharded save writes ``model.safetensors.index.json``. ``state`` replaces the live
        tensors (whole tensors gathered from a tensor-parallel run).
        """
        save_state_dict(self.checkpoint_state(state), save_directory, max_shard_size)
        self.config.save_pretrained(save_directory, architecture=type(self).__name__)
        tuner = getattr(self, "_tuner", None)
        if tuner is not None:  # adapters added by pet_config / inject_adapter_in_model: PEFT files beside
            tuner.save_pretrained(save_directory)
        if getattr(self, "generation_config", None) is not None:
            self.generation_config.save_pretrained(save_directory)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of scalar parameters (shared tensors counted once)."""
        params: Iterable = self.trainable_params() if trainable_only else self.get_parameters()
        return int(sum(np.prod(p.shape) for p in params))


def _fill(param: ms.Parameter, value: np.ndarray, in_place: bool) -> None:
    value = np.asarray(value, dtype=np.float32)
    if in_place:
        write_parameter(param, value)
    else:  # a new buffer is ~3x faster for a fresh model's lazily initialised parameters
        param.set_data(ms.Tensor(value, dtype=param.dtype))


def _short(items: list, limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
