"""LISA (layerwise importance sampling): full fine-tuning of a few randomly drawn decoder layers at a time.

A training-side method, as in SWIFT (``--lisa_activated_layers``, ``--lisa_step_interval``): it adds no
tensors and saves nothing of its own (the model trains in full and is saved whole), so it is switched on by
TrainingArguments and runs as a Trainer callback rather than a registered ``Swift.prepare_model`` tuner.
"""
from .config import LisaConfig
from .model import LisaCallback, decoder_layers, draw_layers

__all__ = ["LisaCallback", "LisaConfig", "decoder_layers", "draw_layers"]
