"""Prompt tuning: trained virtual-token embeddings before every input (PEFT's ``PromptTuningConfig``)."""
import re

from ...registry import TUNERS
from ..tuner_layer import TunerMethod
from .config import PromptTuningConfig
from .model import inject_prompt_tuning


def _file_key(path: str, name: str):
    """PEFT saves the prompt table as plain ``prompt_embeddings`` (no module path)."""
    return "prompt_embeddings" if re.search(rf"\.prompt_embeddings\.{re.escape(name)}\.weight$", path) else None


TUNERS.register(TunerMethod("PROMPT_TUNING", PromptTuningConfig, inject_prompt_tuning, mergeable=False,
                            slots=("prompt_embeddings",), pet_names=("prompt_tuning", "prompttuning"),
                            file_key=_file_key, merge_refusal="it adds inputs, not weights"),
                name="PROMPT_TUNING")
