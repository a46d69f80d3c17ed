"""Process-level setup (device, mode, data parallelism) and the gradient reduction data parallelism needs."""
from .config import ParallelConfig, RecomputeConfig
from .context import ContextConfig, ParallelContextConfig, init_context
