"""The trainer's running state, shared with callbacks and saved in checkpoints."""
import dataclasses
import time
from typing import Any, Dict, List, Optional


@dataclasses.dataclass
class TrainerState:
    """Where a run is; ``log_history`` holds every logged metrics dict."""

    global_step: int = 0
    """Optimizer steps taken so far."""
    max_steps: int = 0
    """Optimizer steps the run will take."""
    epoch: float = 0.0
    """Fractional epoch reached."""
    num_train_epochs: int = 1
    """Epochs the run will take."""
    tokens_seen: int = 0
    """Non-padding tokens processed by this process's training steps."""
    start_time: float = dataclasses.field(default_factory=time.time)
    """When training (or resuming) started, for throughput and ETA."""
    start_step: int = 0
    """global_step when this process started (a resumed run starts above 0)."""
    output_dir: str = "./output"
    """Where logs, checkpoints and plots go."""
    is_main_process: bool = True
    """Rank 0 writes logs and checkpoints; other ranks stay quiet."""
    best_metric: Optional[float] = None
    """Best evaluation loss so far."""
    log_history: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    """Every logged metrics dict, in order."""

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "TrainerState":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
