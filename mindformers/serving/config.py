"""What a served model is allowed to hold: batch, length and adapter-pool limits, fixed at install time.

``RuntimeConfigBuilder`` is MindIE's chained spelling of the same dataclass::

    cfg = RuntimeConfigBuilder("smollm2", model="smollm2_135m_instruct").max_batch(8).max_length(512).build()
"""
from dataclasses import dataclass
from typing import List, Optional

from .status import ServingError, StatusCode


LORA_DTYPES = ("float32", "float16")  # what the adapter pool may keep its factors in

@dataclass
class RuntimeConfig:
    """Limits of one served model. Every buffer (KV cache, adapter pool) is allocated from these once."""

    model_name: str
    """The name requests and the server use for the base model."""
    model: str
    """A preset name (``smollm2_135m_instruct``) or a model directory (Hugging Face layout)."""
    max_batch: int = 8
    """Requests decoded together; more wait in the queue."""
    max_length: int = 512
    """Longest request: prompt plus new tokens (the KV cache holds this many per row)."""
    lora_max_num: int = 8
    """Adapters loaded at once (slots of the adapter pool)."""
    lora_max_rank: int = 64
    """Highest adapter rank the pool holds; higher-rank adapters are refused."""
    lora_target_modules: Optional[List[str]] = None
    """Module names (or suffixes, e.g. ``q_proj``) adapters may target; None: every linear layer of the
    decoder blocks. Only these layers carry the adapter pool."""
    lora_kernel: str = "auto"
    """The multi-LoRA product (``serving/lora_kernels.py``): ``host`` (the C++ kernel, CPU), ``gather``
    (MindSpore ops, any device) or ``auto`` (``host`` where it runs, else ``gather``)."""
    lora_dtype: str = "float32"
    """How the pool keeps the adapters' factors: ``float32``, or ``float16`` (half the pool's memory and of
    the bytes a decode step reads; the factors are rounded to float16 at load, the product is computed in
    float32). Adapters whose factors exceed float16's range (65,504) are refused."""
    scaled_adapters: bool = False
    """Serve DoRA and IA3 adapters too (beside LoRA, mixed in one batch); costs a per-row scale in every
    targeted layer, also for LoRA-only batches. Off: such adapters are refused."""
    max_queue: int = 64
    """Requests waiting for a row; beyond this, requests are refused with QUEUE_FULL."""
    warmup: bool = True
    """Compile every prefill and decode graph in ``start_model`` (log2(max_length) prefill and
    2 x log2(max_batch) decode graphs, with and without the adapter kernel; several seconds each for SmolLM2
    on 2 cores), so no request waits for a compilation; False compiles each on first use."""

    def __post_init__(self):
        for name in ("max_batch", "max_length", "lora_max_num", "lora_max_rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ServingError(StatusCode.INVALID_REQUEST, f"{name} must be a positive integer, found {value!r}")
        if self.lora_dtype not in LORA_DTYPES:
            raise ServingError(StatusCode.INVALID_REQUEST, f"lora_dtype must be one of {', '.join(LORA_DTYPES)}, "
                                                            f"found {self.lora_dtype!r}")
        if not isinstance(self.scaled_adapters, bool):
            raise ServingError(StatusCode.INVALID_REQUEST, f"scaled_adapters must be True or False, found "
                                                            f"{self.scaled_adapters!r}")
        if not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise ServingError(StatusCode.INVALID_REQUEST, f"max_queue must be an integer >= 0, found {self.max_queue!r}")
        if not self.model_name or not isinstance(self.model_name, str):
            raise ServingError(StatusCode.INVALID_REQUEST, f"model_name must be a non-empty string, found {self.model_name!r}")
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = [self.lora_target_modules]


class RuntimeConfigBuilder:
    """Chained setters for :class:`RuntimeConfig`; ``build()`` validates and returns it.

    Args:
        model_name: the served name.
        model: preset name or model directory.
    """

    def __init__(self, model_name: str, model: str):
        self._fields = {"model_name": model_name, "model": model}

    def _set(self, name: str, value) -> "RuntimeConfigBuilder":
        self._fields[name] = value
        return self

    def max_batch(self, n: int) -> "RuntimeConfigBuilder":
        return self._set("max_batch", n)

    def max_length(self, n: int) -> "RuntimeConfigBuilder":
        return self._set("max_length", n)

    def lora_max_num(self, n: int) -> "RuntimeConfigBuilder":
        return self._set("lora_max_num", n)

    def lora_max_rank(self, n: int) -> "RuntimeConfigBuilder":
        return self._set("lora_max_rank", n)

    def lora_target_modules(self, names: Optional[List[str]]) -> "RuntimeConfigBuilder":
        return self._set("lora_target_modules", names)

    def lora_kernel(self, name: str) -> "RuntimeConfigBuilder":
        return self._set("lora_kernel", name)

    def lora_dtype(self, name: str) -> "RuntimeConfigBuilder":
        return self._set("lora_dtype", name)

    def scaled_adapters(self, on: bool) -> "RuntimeConfigBuilder":
        return self._set("scaled_adapters", on)

    def max_queue(self, n: int) -> "RuntimeConfigBuilder":
        return self._set("max_queue", n)

    def warmup(self, on: bool) -> "RuntimeConfigBuilder":
        return self._set("warmup", on)

    def build(self) -> RuntimeConfig:
        return RuntimeConfig(**self._fields)


