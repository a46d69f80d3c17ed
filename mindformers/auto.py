"""AutoConfig / AutoModel / AutoTokenizer / AutoProcessor: thin lookups into the registries.

Every ``from_pretrained`` accepts:
- a preset name (``"gpt2"``, ``"smollm2_135m_instruct"``; see :func:`mindformers.list_presets`),
- a Hugging Face directory (``config.json`` of transformers v4 or v5, safetensors weights, tokenizer files),
- a MindFormers-style YAML file (``model:`` / ``processor:`` sections, see :mod:`mindformers.presets`),
- a llama.cpp ``.gguf`` file (config, weights and tokenizer in one file).
"""
import os
from typing import Any, Dict, Optional, Tuple

from .checkpoint import load_gguf, load_state_dict, read_gguf_config
from .configuration_utils import PretrainedConfig
from .modeling_utils import PreTrainedModel
from .presets import load_yaml, parse_model_section, preset_path
from .registry import CONFIGS, MODELS
from .utils import read_json_object, resolve_resource


def _locate(source: str) -> Tuple[str, str]:
    """Classify ``source``: returns ``(kind, path)`` with kind in {"dir", "yaml", "json", "gguf"}."""
    source = os.fspath(source)
    if os.path.isdir(source):
        return "dir", source
    if os.path.isfile(source):
        ext = os.path.splitext(source)[1].lower()
        kinds = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".gguf": "gguf"}
        if ext not in kinds:
            raise ValueError(f"{source}: expected a directory, a .yaml, config .json or .gguf file; found a {ext or 'extensionless'} file")
        return kinds[ext], source
    if os.sep in source or source.endswith((".yaml", ".yml", ".json", ".gguf")):
        raise FileNotFoundError(f"no such file or directory: {source}")
    return "yaml", preset_path(source)


def _config_from_hf_dict(data: Dict[str, Any], where: str) -> PretrainedConfig:
    model_type = data.get("model_type")
    if model_type is None:
        raise ValueError(f"{where}: config has no `model_type`; supported: {CONFIGS.names()}")
    if model_type not in CONFIGS:
        raise ValueError(f"{where}: unsupported model_type {model_type!r}; supported: {CONFIGS.names()}")
    arch = (data.get("architectures") or [None])[0]
    if arch is not None and arch not in MODELS:
        raise ValueError(f"{where}: unsupported architecture {arch!r}; supported: {MODELS.names()}")
    try:
        return CONFIGS.get(model_type).from_dict(data)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _resolve(source: str, overrides: Dict[str, Any], need_checkpoint: bool = True):
    """Read ``source`` into ``(config, architecture name or None, checkpoint path or None, yaml dict or None)``.

    A YAML's checkpoint reference is checked only when ``need_checkpoint`` (a config alone needs no weights)."""
    kind, path = _locate(source)
    if kind == "yaml":
        data = load_yaml(path)
        config, arch, checkpoint = parse_model_section(data, path)
        if checkpoint and need_checkpoint:
            checkpoint = resolve_resource(checkpoint)
        return config.replace(**overrides), arch, checkpoint, data
    if kind == "gguf":
        data = read_gguf_config(path)
        return _config_from_hf_dict(data, path).replace(**overrides), None, path, None
    config_path = path if kind == "json" else os.path.join(path, "config.json")
    data = read_json_object(config_path, "a Hugging Face model directory")
    arch = (data.get("architectures") or [None])[0]
    checkpoint = path if kind == "dir" else os.path.dirname(path)
    return _config_from_hf_dict(data, config_path).replace(**overrides), arch, checkpoint, None


class AutoConfig:
    """Build the right config class from a preset, directory, YAML, config.json or GGUF file."""

    @staticmethod
    def from_pretrained(source: str, **overrides: Any) -> PretrainedConfig:
        """Args:
            source: preset name or path (see the module docstring).
            overrides: config fields to set, in any accepted spelling.
        """
        return _resolve(source, overrides, need_checkpoint=False)[0]

    @staticmethod
    def for_model(model_type: str, **kwargs: Any) -> PretrainedConfig:
        """A config of ``model_type`` ("llama", "gpt2", ...) from keyword arguments in any spelling."""
        return CONFIGS.get(model_type).from_dict(kwargs)


def model_class_for(config: PretrainedConfig, task: Optional[str], arch: Optional[str] = None):
    """The registered model class for ``config``: ``arch`` if given and fitting ``task``, else the
    class registered for the config's type and ``task`` (default causal LM)."""
    if arch is not None:
        cls = MODELS.get(arch)
        if task is None or cls.task == task:
            return cls
    task = task or "causal_lm"
    for name in MODELS.names():
        cls = MODELS.get(name)
        if cls.config_class is type(config) and cls.task == task:
            return cls
    raise ValueError(f"no {task} model is registered for model_type {config.model_type!r}")


class AutoModel:
    """Build or load the model a config describes. ``AutoModel`` gives the architecture the source names
    (a causal LM by default); the subclasses fix the task."""

    task: Optional[str] = None

    @classmethod
    def from_config(cls, config: PretrainedConfig, seed: Optional[int] = None) -> PreTrainedModel:
        """A randomly initialised model for ``config`` (see :meth:`PreTrainedModel.from_config`)."""
        return model_class_for(config, cls.task).from_config(config, seed=seed)

    @classmethod
    def from_pretrained(cls, source: str, **overrides: Any) -> PreTrainedModel:
        """Load weights from a preset, Hugging Face directory, YAML (``checkpoint_name_or_path``) or GGUF."""
        config, arch, checkpoint, _ = _resolve(source, overrides)
        return load_model(model_class_for(config, cls.task, arch), config, checkpoint, source)


def load_model(model_cls, config: PretrainedConfig, checkpoint: Optional[str], source: str) -> PreTrainedModel:
    """``model_cls`` built from ``config`` with the weights at ``checkpoint``; a ``generation_config.json``
    beside the weights becomes the model's default generation settings."""
    model = model_cls.from_state_dict(config, load_checkpoint(checkpoint, source))
    directory = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(checkpoint)
    if config.pet_config and os.path.isfile(os.path.join(directory, "adapter_model.safetensors")):
        from .tuners import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_checkpoint(os.path.join(directory, "adapter_model.safetensors"), source))
    if hasattr(model, "generate") and os.path.isfile(os.path.join(directory, "generation_config.json")):
        from .generation import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(directory)
    return model


def load_checkpoint(checkpoint: Optional[str], source: str) -> Dict[str, Any]:
    """The numpy state dict at ``checkpoint`` (GGUF file, safetensors file or directory)."""
    if checkpoint is None:
        raise ValueError(
            f"{source!r} names no checkpoint (model.model_config.checkpoint_name_or_path is unset), so there "
            f"are no weights to load; for random weights use AutoModel.from_config(AutoConfig.from_pretrained({source!r}))"
        )
    if checkpoint.endswith(".gguf"):
        return load_gguf(checkpoint)[1]
    return load_state_dict(checkpoint)


class AutoModelForCausalLM(AutoModel):
    task = "causal_lm"


class AutoModelForSequenceClassification(AutoModel):
    task = "sequence_classification"


class AutoModelForTokenClassification(AutoModel):
    task = "token_classification"


class AutoModelForQuestionAnswering(AutoModel):
    task = "question_answering"


class AutoModelForFeatureExtraction(AutoModel):
    """The bare backbone (transformers' ``AutoModel`` gives it; ours gives the architecture a source names)."""

    task = "feature_extraction"


_TASK_AUTO_CLASSES = (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoModelForTokenClassification,
                      AutoModelForQuestionAnswering, AutoModelForFeatureExtraction)


def auto_model_for_task(task: str):
    """The Auto class loading models of ``task`` ("causal_lm", "sequence_classification", ...)."""
    for cls in _TASK_AUTO_CLASSES:
        if cls.task == task:
            return cls
    raise ValueError(f"no Auto class for model task {task!r}; known: {', '.join(c.task for c in _TASK_AUTO_CLASSES)}")


class AutoTokenizer:
    """Load the tokenizer of a preset, Hugging Face directory, YAML or tokenizer file."""

    @staticmethod
    def from_pretrained(source: str, **kwargs: Any):
        from .tokenizers import load_tokenizer

        if os.path.isfile(source) and not source.endswith((".yaml", ".yml")):
            return load_tokenizer(source, **kwargs)
        kind, path = _locate(source)
        if kind == "yaml":
            section = (load_yaml(path).get("processor") or {}).get("tokenizer")
            if not section:
                raise ValueError(f"{path}: no `processor.tokenizer` section, so no tokenizer is defined")
            return load_tokenizer(section, **kwargs)
        return load_tokenizer(path, **kwargs)


class AutoProcessor:
    """Load the processor (tokenizer + fixed-length batching) of a preset, directory or YAML."""

    @staticmethod
    def from_pretrained(source: str, **kwargs: Any):
        from .processors import load_processor
        from .tokenizers import load_tokenizer

        kind, path = _locate(source)
        if kind == "yaml":
            section = load_yaml(path).get("processor")
            if not section:
                raise ValueError(f"{path}: no `processor:` section")
            return load_processor(section, **kwargs)
        config = _resolve(path, {}, need_checkpoint=False)[0]
        tokenizer = load_tokenizer(path)
        return load_processor({"type": config.processor_type}, tokenizer=tokenizer, **kwargs)
