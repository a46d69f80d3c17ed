"""Process-level setup (device, mode, data parallelism) and the gradient reduction data parallelism needs."""
from .context import ContextConfig, ParallelContextConfig, init_context
