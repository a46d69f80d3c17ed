"""Model configs: one dataclass per model family, built from keyword arguments in either MindFormers'
or Hugging Face's spelling, and saved in Hugging Face's.

A config accepts three spellings of the same field: the canonical one (Hugging Face Llama names such as
``num_hidden_layers``), MindFormers' (``num_layers``, ``num_heads``, ``seq_length``) and, per family,
Hugging Face's own (``n_layer``, ``n_embd`` for GPT-2). Unknown keys are an error that names the key and
lists the valid ones.
"""
import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Union

from .fields import check_field_types
from .utils import atomic_write_text

# Keys a Hugging Face ``config.json`` carries that describe the file or the torch runtime, not the model.
# They are accepted and dropped when a config is read.
HF_BOOKKEEPING_KEYS = frozenset({
    "architectures", "transformers_version", "_name_or_path", "model_type", "use_cache",
    "output_attentions", "output_hidden_states", "return_dict", "torchscript", "is_encoder_decoder",
    "_attn_implementation_autoset", "attn_implementation", "chunk_size_feed_forward",
    "tf_legacy_loss", "use_bfloat16", "pruned_heads", "is_decoder", "add_cross_attention",
})

# Spellings used by MindFormers YAML files for fields shared by every family.
COMMON_ALIASES = {
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "n_kv_heads": "num_key_value_heads",
    "seq_length": "max_position_embeddings",
    "torch_dtype": "dtype",
    "param_init_type": "dtype",
    "compute_dtype": "dtype",
}

SUPPORTED_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(init=False)
class PretrainedConfig:
    """Base of every model config.

    Subclasses are dataclasses declared with ``@dataclass(init=False)``; this ``__init__`` takes any
    spelling of their fields (see the module docstring), fills defaults and calls ``__post_init__``.
    """

    model_type: ClassVar[str] = ""
    # other spelling -> canonical field name (family specific, added to COMMON_ALIASES)
    aliases: ClassVar[Dict[str, str]] = {}
    # canonical field name -> name written to config.json (when it differs)
    hf_names: ClassVar[Dict[str, str]] = {}
    # registered processor class that prepares text for this family
    processor_type: ClassVar[str] = ""

    vocab_size: int = 32000
    """Number of tokens in the vocabulary."""
    hidden_size: int = 4096
    """Width of the residual stream."""
    num_hidden_layers: int = 32
    """Number of transformer blocks."""
    num_attention_heads: int = 32
    """Number of query heads."""
    max_position_embeddings: int = 2048
    """Longest sequence the model is meant for (MindFormers: ``seq_length``)."""
    initializer_range: float = 0.02
    """Standard deviation of the normal initialiser used by ``from_config``."""
    bos_token_id: Optional[int] = None
    """Beginning-of-sequence token id."""
    eos_token_id: Optional[Union[int, List[int]]] = None
    """End-of-sequence token id, or a list of them."""
    pad_token_id: Optional[int] = None
    """Padding token id; the classification head pools the last token that is not padding."""
    tie_word_embeddings: bool = False
    """Share the input embedding matrix with the output projection."""
    num_labels: int = 2
    """Number of classes of the sequence-classification head."""
    id2label: Optional[Dict[int, str]] = None
    """Class names of the classification head, by class index."""
    problem_type: Optional[str] = None
    """Classification loss: ``regression``, ``single_label_classification`` or ``multi_label_classification``."""
    dtype: str = "float32"
    """Parameter and compute dtype (MindFormers: ``param_init_type``/``compute_dtype``)."""
    pet_config: Optional[Dict[str, Any]] = None
    """Parameter-efficient tuning applied when the model is built, e.g. ``{pet_type: lora, lora_rank: 8,
    lora_alpha: 16, lora_dropout: 0.05, target_modules: '.*q_proj|.*v_proj'}``."""

    def __init__(self, **kwargs: Any):
        values = self._canonicalize(kwargs)
        # the fields given (not defaulted or derived): replace() keeps only these, so derived ones follow changes
        object.__setattr__(self, "_given", set(values))
        for f in dataclasses.fields(self):
            if f.name in values:
                setattr(self, f.name, values[f.name])
            elif f.default is not dataclasses.MISSING:
                setattr(self, f.name, f.default)
            elif f.default_factory is not dataclasses.MISSING:
                setattr(self, f.name, f.default_factory())
        check_field_types(type(self), values, type(self).__name__)  # before __post_init__ compares or derives from them
        self.__post_init__()

    def __post_init__(self):
        if self.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"dtype must be one of {SUPPORTED_DTYPES}, found {self.dtype!r}")
        if self.id2label is not None:
            self.id2label = {int(k): v for k, v in self.id2label.items()}
            self.num_labels = len(self.id2label)
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{type(self).__name__}.{name} must be a positive integer, found {value!r}")

    # ---------------------------------------------------------------- decoder layout
    def layer_type(self, layer_idx: int) -> str:
        """``"sliding_attention"`` or ``"full_attention"``: from ``layer_types`` if the family has them, else
        every layer slides when ``sliding_window`` is set (Mistral)."""
        types = getattr(self, "layer_types", None)
        if types:
            return types[layer_idx]
        return "sliding_attention" if getattr(self, "sliding_window", None) else "full_attention"

    def attention_window(self) -> Optional[int]:
        """The sliding window of the sliding layers, or None when every layer attends to the full context."""
        if any(self.layer_type(i) == "sliding_attention" for i in range(self.num_hidden_layers)):
            return self.sliding_window
        return None

    def generation_defaults(self) -> Dict[str, Any]:
        """:class:`~mindformers.generation.GenerationConfig` fields this config sets (none by default)."""
        return {}

    def aux_loss_settings(self) -> Optional[tuple]:
        """``(coefficient, experts, top_k)`` of the router load-balancing loss added to the training loss,
        or None (dense models, or MoE models with ``output_router_logits`` off)."""
        return None

    # ---------------------------------------------------------------- reading
    @classmethod
    def _canonicalize(cls, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        """Map every spelling onto canonical field names; reject unknown keys and conflicting duplicates."""
        valid = {f.name for f in dataclasses.fields(cls)}
        aliases = {**COMMON_ALIASES, **cls.aliases, **{hf: name for name, hf in cls.hf_names.items()}}
        out: Dict[str, Any] = {}
        source: Dict[str, str] = {}
        unknown = []
        for key, value in kwargs.items():
            if key in HF_BOOKKEEPING_KEYS or key == "label2id":
                continue
            name = key if key in valid else aliases.get(key)
            if name not in valid:
                unknown.append(key)
                continue
            if name in out and out[name] != value:
                raise ValueError(
                    f"{cls.__name__}: {source[name]!r}={out[name]!r} and {key!r}={value!r} set the same field "
                    f"{name!r} to different values; give only one of them"
                )
            out[name], source[name] = value, key
        if unknown:
            spellings = sorted(valid | {a for a, n in aliases.items() if n in valid})
            raise ValueError(
                f"unknown key(s) {sorted(unknown)} for {cls.__name__} (model_type {cls.model_type!r}); "
                f"valid keys: {', '.join(spellings)}"
            )
        return out

    @classmethod
    def from_pretrained(cls, source: str, **overrides: Any) -> "PretrainedConfig":
        """The config of a preset, Hugging Face directory, YAML, ``config.json`` or GGUF file, as
        ``AutoConfig.from_pretrained`` reads it (MindFormers: ``GPT2Config.from_pretrained("gpt2_13b")``).

        The source must hold exactly this class: ``LlamaConfig.from_pretrained("qwen3_0_6b")`` is refused
        although Qwen3Config derives from LlamaConfig, since a Qwen3 config read as Llama would build a
        different model (transformers likewise refuses another ``model_type``). ``PretrainedConfig`` itself
        takes any.

        Args:
            source: preset name or path (see :mod:`mindformers.auto`).
            overrides: config fields to set, in any accepted spelling.

        Returns:
            The config, an instance of ``cls``.

        Raises:
            TypeError: the source holds another config class.
        """
        from .auto import AutoConfig  # imported here: mindformers.auto imports this module

        config = AutoConfig.from_pretrained(source)
        if cls is not PretrainedConfig and type(config) is not cls:
            found = type(config).__name__
            raise TypeError(
                f"{source!r} holds a {found} (model_type {config.model_type!r}), not a {cls.__name__} (model_type "
                f"{cls.model_type!r}); load it with {found}.from_pretrained({source!r}) or "
                f"AutoConfig.from_pretrained({source!r})"
            )
        return config.replace(**overrides) if overrides else config

    @classmethod
    def from_dict(cls, config: Dict[str, Any]) -> "PretrainedConfig":
        """Build a config from a dict in any supported spelling (HF ``config.json`` or MindFormers YAML)."""
        return cls(**cls.normalize_hf_dict(dict(config)))

    def replace(self, **changes: Any) -> "PretrainedConfig":
        """A copy with ``changes`` applied; keys may use any accepted spelling. Fields this config derived
        (``head_dim`` from hidden/heads, Qwen's ``layer_types``, ...) are derived again from the new values."""
        changes = self._canonicalize(changes)
        given = getattr(self, "_given", None)
        current = {k: v for k, v in self.to_dict().items() if given is None or k in given}
        if "num_labels" in changes and "id2label" not in changes:
            current["id2label"] = None  # the old class names no longer fit
        return type(self)(**{**current, **changes})

    @classmethod
    def normalize_hf_dict(cls, config: Dict[str, Any]) -> Dict[str, Any]:
        """Hook for families whose ``config.json`` needs restructuring before the field mapping."""
        return config

    # ---------------------------------------------------------------- writing
    def to_dict(self) -> Dict[str, Any]:
        """Canonical field names and values."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_hf_dict(self, architecture: Optional[str] = None) -> Dict[str, Any]:
        """The ``config.json`` that Hugging Face transformers reads (v4 and v5)."""
        out: Dict[str, Any] = {"model_type": self.model_type}
        if architecture:
            out["architectures"] = [architecture]
        for key, value in self.to_dict().items():
            if value is None:  # unset optional fields: transformers applies its own defaults
                continue
            if key == "id2label":
                out["id2label"] = {str(k): v for k, v in value.items()}
                out["label2id"] = {v: k for k, v in value.items()}
                continue
            if key == "dtype":
                out["torch_dtype"] = value  # transformers v4 spelling; v5 reads it too
            out[self.hf_names.get(key, key)] = value
        return out

    def save_pretrained(self, save_directory: str, architecture: Optional[str] = None) -> str:
        """Write ``config.json`` into ``save_directory`` atomically; return its path."""
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, "config.json")
        atomic_write_text(path, json.dumps(self.to_hf_dict(architecture), indent=2, sort_keys=True) + "\n")
        return path
