"""Tuner configs and their files: PEFT's ``adapter_config.json`` and SWIFT's, one dataclass per method.

A config is written the way Hugging Face PEFT writes it (``peft_type``, ``task_type``, the method's fields),
so PEFT can load our adapters. When reading, fields that only newer PEFT versions know are dropped with a
warning (PEFT itself does the same since PR #2038); fields that exist to switch on features this package
does not implement must keep their neutral value, or loading fails instead of silently computing
something else.
"""
import dataclasses
import json
import os
from typing import Any, ClassVar, Dict, Optional, Tuple

from ..fields import check_field_types
from ..utils import atomic_write_text, logger, read_json_object

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
SWIFT_TYPE_KEY = "swift_type"
PEFT_TYPE_KEY = "peft_type"


@dataclasses.dataclass
class TunerConfig:
    """Fields every tuner config has (PEFT's ``PeftConfig``)."""

    peft_type: ClassVar[str] = ""
    # Fields PEFT writes that only switch on features we do not implement: name -> neutral values.
    inert_fields: ClassVar[Dict[str, Tuple[Any, ...]]] = {}
    # MindFormers' pet_config spellings of fields: pet_config key -> field name
    pet_aliases: ClassVar[Dict[str, str]] = {}

    task_type: Optional[str] = "CAUSAL_LM"
    """PEFT task type (CAUSAL_LM, SEQ_CLS, ...)."""
    base_model_name_or_path: Optional[str] = None
    """Where the base model came from; AutoPeftModel loads it from here."""
    inference_mode: bool = False
    """Loaded for inference only: adapter weights are frozen."""
    revision: Optional[str] = None
    """Hub revision of the base model (kept for round trips)."""

    def to_dict(self) -> Dict[str, Any]:
        """The ``adapter_config.json`` content, in PEFT's format."""
        data = dataclasses.asdict(self)
        data[PEFT_TYPE_KEY] = self.peft_type
        for name, neutral in self.inert_fields.items():
            data.setdefault(name, neutral[0])
        return data

    def save_pretrained(self, directory: str) -> str:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, CONFIG_NAME)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: str = "adapter config") -> "TunerConfig":
        """Build from a PEFT/SWIFT dict; see the module docstring for unknown and unsupported fields."""
        data = dict(data)
        kind = data.pop(PEFT_TYPE_KEY, None) or data.pop(SWIFT_TYPE_KEY, None)
        data.pop(SWIFT_TYPE_KEY, None)
        if kind is not None and str(kind).upper() != cls.peft_type:
            raise ValueError(f"{source}: a {kind} config cannot be read as {cls.__name__} ({cls.peft_type})")
        known = {f.name for f in dataclasses.fields(cls)}
        unsupported = {k: v for k, v in data.items() if k in cls.inert_fields and v not in cls.inert_fields[k]}
        if unsupported:
            raise ValueError(f"{source}: these settings are not supported by mindformers: {unsupported}; "
                             f"they must be unset (one of {', '.join(map(repr, cls.inert_fields[next(iter(unsupported))]))})")
        ignored = sorted(set(data) - known - set(cls.inert_fields) - {"peft_version", "auto_mapping"})
        if ignored:
            logger.warning("%s: ignoring fields this version does not know: %s", source, ignored)
        return cls._checked({k: v for k, v in data.items() if k in known}, source)

    @classmethod
    def _checked(cls, values: Dict[str, Any], source: str) -> "TunerConfig":
        """``cls(**values)`` with each value's type checked first, and any error naming ``source``."""
        check_field_types(cls, values, source)
        try:
            return cls(**values)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None

    @classmethod
    def from_pet_config(cls, pet_config: Dict[str, Any]) -> "TunerConfig":
        """A MindFormers ``pet_config`` section (``pet_type`` dropped; keys in MindFormers' spellings
        (``pet_aliases``) or the field names); an unknown key is an error naming the valid ones."""
        data = {cls.pet_aliases.get(k, k): v for k, v in pet_config.items() if k != "pet_type"}
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ValueError(f"unknown pet_config key(s) {unknown} for {cls.peft_type}; valid: "
                             f"{', '.join(sorted(valid | set(cls.pet_aliases)))}")
        return cls._checked(data, "pet_config")

    @classmethod
    def from_pretrained(cls, directory: str) -> "TunerConfig":
        """Read ``adapter_config.json`` from ``directory``."""
        return cls.from_dict(read_config_file(directory), os.path.join(directory, CONFIG_NAME))


def read_config_file(directory: str) -> Dict[str, Any]:
    """The parsed ``adapter_config.json`` of an adapter directory, with clear errors."""
    return read_json_object(os.path.join(directory, CONFIG_NAME), "an adapter directory")


def config_from_pet(pet_config: Dict[str, Any]) -> TunerConfig:
    """The tuner config a model config's ``pet_config`` asks for: ``pet_type`` names any registered method,
    by MindFormers' name (``lora``, ...) or PEFT's (``LORA``, ``IA3``, ...)."""
    from ..registry import TUNERS

    if not isinstance(pet_config, dict):
        raise ValueError(f"pet_config must be a mapping with a pet_type, found {type(pet_config).__name__}")
    kind = str(pet_config.get("pet_type", "lora"))
    for name in TUNERS.names():
        method = TUNERS.get(name)
        if kind.upper() == method.peft_type or kind.lower() in method.pet_names:
            return method.config_class.from_pet_config(pet_config)
    known = sorted({n for name in TUNERS.names() for n in TUNERS.get(name).pet_names})
    raise ValueError(f"pet_config.pet_type {kind!r} is not a registered tuner method; known: {known} "
                     f"(or PEFT's types {TUNERS.names()})")
