"""Training: TrainingArguments, the task Trainer, checkpoints, callbacks."""
from .args import TrainingArguments
from .state import TrainerState
from .trainer import Trainer
