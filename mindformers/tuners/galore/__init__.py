"""GaLore (gradient low-rank projection): AdamW whose moments of chosen 2-D weights live in a rank-r subspace
of the gradient, recomputed every update_proj_gap steps; the model trains in full.

A training-side method, as in SWIFT (``GaLoreConfig`` goes to its trainer's optimizer, not to
``Swift.prepare_model``) and HF (``optim="galore_adamw"``): it adds no tensors to the model and saves only
optimizer state, so it is chosen by TrainingArguments (``optim``, ``optim_target_modules``, ``optim_args``)
rather than registered as a tuner.
"""
from .config import GaLoreConfig
from .model import build_galore_optimizer, galore_targets
from .optimizer import GaLoreAdamW, projected_shape, state_bytes

__all__ = ["GaLoreAdamW", "GaLoreConfig", "build_galore_optimizer", "galore_targets", "projected_shape",
           "state_bytes"]
