"""One small registry class and the registries the suite looks names up in.

A registry maps a name (``"llama"``, ``"LlamaForCausalLM"``, ``"text_generation"``) to a class or a
function. Lookups that fail list the names that would have worked, so a typo in a YAML file explains
itself.
"""
from typing import Dict, Iterator, Optional


class UnknownNameError(KeyError):
    """A name that no registry or preset knows; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0])


class Registry:
    """A named table of classes or functions.

    Args:
        kind: what the registry holds, used in error messages ("model", "tokenizer", ...).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, object] = {}

    def register(self, obj: Optional[object] = None, *, name: Optional[str] = None):
        """Register ``obj`` under ``name`` (default: its ``__name__``). Usable as a decorator."""

        def add(item):
            key = name or item.__name__
            if key in self._items and self._items[key] is not item:
                raise KeyError(f"{self.kind} {key!r} is already registered to {self._items[key]!r}")
            self._items[key] = item
            return item

        return add if obj is None else add(obj)

    def get(self, name: str):
        """Return the entry called ``name``; raise ``KeyError`` listing the known names if absent."""
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(sorted(self._items)) or '(none)'}"
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self):
        """All registered names, sorted."""
        return sorted(self._items)


CONFIGS = Registry("model_type")  # model_type -> config class ("llama" -> LlamaConfig)
MODELS = Registry("model architecture")  # architecture name -> model class
TOKENIZERS = Registry("tokenizer")  # class name -> tokenizer class
PROCESSORS = Registry("processor")  # class name -> processor class
TASKS = Registry("task")  # task name -> task description (pipeline, trainer)
TUNERS = Registry("tuner type")  # PEFT type ("LORA") -> TunerMethod
BLOCKS = Registry("decoder block part")  # attention / MLP Cell a config names ("Attention", "SparseMoeBlock")
