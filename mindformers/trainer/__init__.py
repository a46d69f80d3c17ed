"""Training: TrainingArguments, the task Trainer, checkpoints, callbacks."""
from .args import TrainingArguments
from .callbacks import TrainerCallback
from .state import TrainerState
from .trainer import Trainer
