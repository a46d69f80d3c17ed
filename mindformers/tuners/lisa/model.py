"""LISA through the Trainer: a callback that, every ``lisa_step_interval`` steps, freezes every decoder layer
but ``lisa_activated_layers`` drawn at random (the embeddings, final norm and head always train).

The trainer answers a changed trainable set (``on_step_begin`` returning True) with a new AdamW over exactly
the trainable parameters and a step compiled for them: the moments of the layers just frozen are released
with the old optimizer, and the backward pass takes no weight gradients for frozen layers. Each period thus
starts its AdamW afresh (zero moments, step count 0), as the LISA paper's runs did (one AdamW run per
interval, LMFlow issue #729). SWIFT's and LMFlow's callbacks only flip ``requires_grad`` inside one torch
optimizer: there a frozen layer's moments stay allocated and resume where they were when it is drawn again.

Why recompile rather than mask: a compiled step takes gradients of a fixed tuple of Parameters. Masking (all
layers in the graph, frozen ones' updates multiplied by 0) would keep every layer's gradient and moments in
memory, which is what LISA exists to avoid; recompiling costs one compilation per period (tests/tuners/
test_lisa.py measures both on the tiny model; see the report in the commit).
"""
from typing import Any, List, Optional

import numpy as np
from mindspore import nn

from ...trainer.callbacks import TrainerCallback
from .config import LisaConfig


def decoder_layers(model: nn.Cell) -> nn.CellList:
    """The decoder layer list LISA draws from (``model.stack().layers``)."""
    from ...trainer.checkpointing import tuner_of

    tuner = tuner_of(model)
    if tuner is not None:
        raise ValueError(f"LISA trains the model's own layers (full fine-tuning, as SWIFT requires tuner_type "
                         f"full); this model has tuner adapters {sorted(tuner.peft_config)}")
    stack = model.stack() if hasattr(model, "stack") else None
    layers = getattr(stack, "layers", None)
    if not isinstance(layers, nn.CellList) or not len(layers):
        raise TypeError(f"LISA draws decoder layers from model.stack().layers; {type(model).__name__} has none")
    return layers


def draw_layers(seed: int, period: int, total: int, count: int) -> List[int]:
    """The layers trained in sampling period ``period``: ``count`` of ``range(total)``, uniform without
    replacement, from a generator seeded by (seed, period) alone."""
    rng = np.random.default_rng([int(seed), int(period)])
    return sorted(int(i) for i in rng.choice(total, size=count, replace=False))


class LisaCallback(TrainerCallback):
    """Draws the trained decoder layers every ``step_interval`` steps (see the module docstring).

    Args:
        activated_layers: layers trained at a time; step_interval: steps per drawing; seed: drawing seed.

    Attributes:
        active_layers: the layers training now.
        history: ``(first step, layers)`` of every period this callback started.
    """

    def __init__(self, activated_layers: int, step_interval: int = 20, seed: int = 42):
        self.config = LisaConfig(activated_layers, step_interval, seed)
        self.active_layers: List[int] = []
        self.history: List[tuple] = []
        self._period: Optional[int] = None
        self._model: Any = None

    def on_step_begin(self, state, model) -> bool:
        config = self.config
        period = state.global_step // config.lisa_step_interval
        if period == self._period and model is self._model:
            return False
        layers = decoder_layers(model)
        if config.lisa_activated_layers > len(layers):
            raise ValueError(f"lisa_activated_layers={config.lisa_activated_layers} but {type(model).__name__} "
                             f"has {len(layers)} decoder layers")
        active = draw_layers(config.seed, period, len(layers), config.lisa_activated_layers)
        in_layers = set()
        for i, layer in enumerate(layers):
            for param in layer.get_parameters():
                param.requires_grad = i in active
                in_layers.add(id(param))
        for param in model.get_parameters():  # embeddings, final norm, head (tied or not)
            if id(param) not in in_layers:
                param.requires_grad = True
        self.active_layers, self._period, self._model = active, period, model
        self.history.append((state.global_step, active))
        # a resumed run starting inside a period continues its optimizer; one starting a period does not
        return state.global_step % config.lisa_step_interval == 0
