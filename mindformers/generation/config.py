"""GenerationConfig: the settings of ``generate()``, with Hugging Face's names and defaults.

Read from a model directory's ``generation_config.json`` (keys transformers writes for bookkeeping are
dropped; other unknown keys are ignored with a warning, since newer transformers versions add fields);
keyword arguments to ``generate()`` must be known fields, so a typo is an error that lists the valid ones.
"""
import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

from ..fields import check_field_types
from ..utils import atomic_write_text, logger, read_json_object

_BOOKKEEPING = {"_from_model_config", "transformers_version", "_commit_hash", "return_dict_in_generate",
                "output_scores", "output_logits", "output_attentions", "output_hidden_states"}


@dataclass
class GenerationConfig:
    """How ``generate()`` chooses tokens and when it stops."""

    max_length: int = 20
    """Longest output (prompt + new tokens); ``max_new_tokens`` takes precedence."""
    max_new_tokens: Optional[int] = None
    """Most tokens to generate after the prompt."""
    min_new_tokens: int = 0
    """End-of-sequence tokens are suppressed until this many tokens were generated."""
    do_sample: bool = False
    """Sample from the (warped) distribution instead of taking the most likely token."""
    temperature: float = 1.0
    """Divide logits by this before sampling (> 0)."""
    top_k: int = 50
    """Sample among the k most likely tokens only (0 disables)."""
    top_p: float = 1.0
    """Sample within the smallest set of tokens whose probability reaches top_p, in (0, 1]."""
    repetition_penalty: float = 1.0
    """CTRL's penalty (Keskar et al. 2019) on tokens already in the sequence (> 0; 1 disables)."""
    num_beams: int = 1
    """Beam search with this many beams (1: greedy or sampling)."""
    length_penalty: float = 1.0
    """Beam scores are divided by (generated length ** length_penalty)."""
    early_stopping: Union[bool, str] = False
    """Beam search stops: True when num_beams hypotheses are done; False by a heuristic; "never" exactly."""
    num_return_sequences: int = 1
    """Sequences returned per prompt (at most num_beams for beam search)."""
    eos_token_id: Optional[Union[int, List[int]]] = None
    """Token id(s) that end a sequence; None takes the model config's."""
    pad_token_id: Optional[int] = None
    """Id that fills finished rows and left padding; None takes the model's pad, else the first eos."""
    bos_token_id: Optional[int] = None
    """Beginning-of-sequence id (kept for round trips of generation_config.json)."""
    stop_strings: Optional[Union[str, List[str]]] = None
    """Stop a row once its generated text contains one of these (needs ``tokenizer=`` in generate)."""
    seed: Optional[int] = None
    """Seed of the sampler, for reproducible sampling."""
    use_cache: bool = True
    """Decode with the static KV cache (False recomputes the whole sequence every step)."""

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` for settings of the wrong type or outside their range."""
        check_field_types(type(self), self.__dict__, "GenerationConfig")
        if not (isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], found {self.top_p!r}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ValueError(f"temperature must be > 0, found {self.temperature!r} (use do_sample=False for greedy)")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"top_k must be an integer >= 0, found {self.top_k!r}")
        if not (isinstance(self.repetition_penalty, (int, float)) and self.repetition_penalty > 0):
            raise ValueError(f"repetition_penalty must be > 0, found {self.repetition_penalty!r}")
        if not (isinstance(self.num_beams, int) and self.num_beams >= 1):
            raise ValueError(f"num_beams must be an integer >= 1, found {self.num_beams!r}")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', found {self.early_stopping!r}")
        if not (isinstance(self.num_return_sequences, int) and self.num_return_sequences >= 1):
            raise ValueError(f"num_return_sequences must be an integer >= 1, found {self.num_return_sequences!r}")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"num_return_sequences ({self.num_return_sequences}) cannot exceed num_beams ({self.num_beams})"
            )
        if self.max_new_tokens is not None and not (isinstance(self.max_new_tokens, int) and self.max_new_tokens > 0):
            raise ValueError(f"max_new_tokens must be a positive integer, found {self.max_new_tokens!r}")
        if not (isinstance(self.max_length, int) and self.max_length > 0):
            raise ValueError(f"max_length must be a positive integer, found {self.max_length!r}")
        if not (isinstance(self.min_new_tokens, int) and self.min_new_tokens >= 0):
            raise ValueError(f"min_new_tokens must be an integer >= 0, found {self.min_new_tokens!r}")
        stop = [self.stop_strings] if isinstance(self.stop_strings, str) else self.stop_strings
        if stop is not None and not (isinstance(stop, (list, tuple)) and all(isinstance(s, str) and s for s in stop)):
            raise ValueError(f"stop_strings must be a non-empty string or a list of them, found {self.stop_strings!r}")

    @classmethod
    def field_names(cls) -> List[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def update(self, **kwargs: Any) -> "GenerationConfig":
        """A copy with ``kwargs`` applied; unknown names raise ``ValueError`` listing the valid ones."""
        unknown = sorted(set(kwargs) - set(self.field_names()))
        if unknown:
            raise ValueError(f"unknown generation argument(s) {unknown}; valid: {', '.join(self.field_names())}")
        return dataclasses.replace(self, **kwargs)

    @property
    def eos_token_ids(self) -> List[int]:
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)

    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: str = "generation config") -> "GenerationConfig":
        known = set(cls.field_names())
        ignored = sorted(set(data) - known - _BOOKKEEPING)
        if ignored:
            logger.warning("%s: ignoring generation settings this version does not use: %s", source, ignored)
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_model_config(cls, config) -> "GenerationConfig":
        """Token ids taken from a model config, plus the generation defaults a family's config carries
        (MindFormers' PanguAlpha YAMLs set ``top_k``, ``do_sample``, ``max_decode_length``, ...)."""
        return cls(eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id,
                   **config.generation_defaults())

    @classmethod
    def from_pretrained(cls, directory: str) -> "GenerationConfig":
        """Read ``generation_config.json`` from a model directory."""
        path = os.path.join(directory, "generation_config.json")
        return cls.from_dict(read_json_object(path, "a model directory"), path)

    def save_pretrained(self, directory: str) -> str:
        """Write the fields that differ from the defaults to ``generation_config.json`` (atomically)."""
        default = GenerationConfig()
        data = {k: v for k, v in dataclasses.asdict(self).items() if v != getattr(default, k) or k.endswith("token_id")}
        data = {k: v for k, v in data.items() if v is not None}
        path = os.path.join(directory, "generation_config.json")
        os.makedirs(directory, exist_ok=True)
        atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
        return path
