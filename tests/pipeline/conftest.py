"""Helpers for the pipeline tests: tokenizers that fit the tiny fixture models, SmolLM2's tokenizer, and a
fake causal LM that follows generate()'s contract."""
from types import SimpleNamespace

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from mindformers import AutoTokenizer, PreTrainedTokenizer

# A chat template for the word tokenizer: each message's content, then "t5" as the assistant's header.
WORD_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}t5{% endif %}"
)

def word_tokenizer(vocab_size: int) -> PreTrainedTokenizer:
    """A whitespace tokenizer whose word "t<i>" is token i, so the tiny fixture models (vocabularies of
    128 and 384 ids, no tokenizer files) get texts whose ids are exactly the reference ids.

    "t0" (id 0, the fixtures' pad id) is the pad token; no BOS/EOS is added; padding side is right.
    """
    backend = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizer(backend, pad_token="t0", chat_template=WORD_CHAT_TEMPLATE)


def words(ids) -> str:
    """The word-tokenizer text of token ids."""
    return " ".join(f"t{int(i)}" for i in ids)


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    return AutoTokenizer.from_pretrained("smollm2_135m_instruct")


GENERATE_OPTIONS = {"max_length", "max_new_tokens", "do_sample", "top_k", "num_return_sequences", "seed"}


class FakeLM:
    """Follows generate()'s contract: returns the prompt followed by new tokens; row r, sequence j gets
    [100 + 10 * r + j, 101 + 10 * r + j, ...]; rejects unknown options like the real generate."""

    def __init__(self):
        self.config = SimpleNamespace(pad_token_id=0, eos_token_id=2)
        self.calls = []

    def generate(self, input_ids, attention_mask=None, generation_config=None, streamer=None, tokenizer=None,
                 **kwargs):
        unknown = sorted(set(kwargs) - GENERATE_OPTIONS)
        if unknown:
            raise ValueError(f"unknown generation option(s) {unknown}; valid: {sorted(GENERATE_OPTIONS)}")
        self.calls.append(dict(input_ids=input_ids, attention_mask=attention_mask, tokenizer=tokenizer, **kwargs))
        n = kwargs.get("num_return_sequences", 1)
        new = kwargs.get("max_new_tokens", 3)
        ids = np.repeat(np.asarray(input_ids), n, axis=0)
        rows = np.arange(len(ids))
        tail = 100 + 10 * (rows // n)[:, None] + (rows % n)[:, None] + np.arange(new)[None]
        return np.concatenate([ids, tail], axis=1).astype(np.int64)
