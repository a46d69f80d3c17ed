"""Serving: a multi-LoRA inference engine with continuous batching, and an OpenAI-compatible server
(``python -m mindformers.serving``)."""
from .config import RuntimeConfig, RuntimeConfigBuilder
from .engine import Engine, ResultQueue
from .status import HTTP_STATUS, GenerateStatus, ServingError, Status, StatusCode

__all__ = ["Engine", "GenerateStatus", "HTTP_STATUS", "ResultQueue", "RuntimeConfig", "RuntimeConfigBuilder",
           "ServingError", "Status", "StatusCode"]
