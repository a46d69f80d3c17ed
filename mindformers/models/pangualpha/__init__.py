"""PanguAlpha (Zeng et al. 2021), as MindFormers builds it: GPT-style blocks plus a top query layer."""
from ...registry import CONFIGS
from .config import PanguAlphaConfig
from .modeling import PanguAlphaHeadModel, PanguAlphaModel

CONFIGS.register(PanguAlphaConfig, name=PanguAlphaConfig.model_type)
