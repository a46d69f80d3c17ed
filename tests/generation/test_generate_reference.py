"""generate() returns transformers' ids: greedy, eos stops, repetition penalty, min_new_tokens, beam search
(length penalty, early stopping modes, several returned sequences), single prompts and left-padded batches.

References: tests/fixtures/generation/make_reference.py (transformers 5.23 on the same weights).
"""
import json
import os

import numpy as np
import pytest

from mindformers import AutoModel
from tests.conftest import FIXTURES, INTEROP

REFERENCE = json.load(open(os.path.join(FIXTURES, "generation", "reference.json")))
CASES = [c for c in REFERENCE["cases"] if c["model"] in ("llama", "gpt2")]
_MODELS = {}
MODE = "pynative"  # tiny models: eager decoding beats compiling a graph per batch shape


def _model(name):
    if name not in _MODELS:
        _MODELS[name] = AutoModel.from_pretrained(os.path.join(INTEROP, name, "base"))
        _MODELS[name].generation_mode = MODE
    return _MODELS[name]


def _until_eos(ids, prompt_len, eos):
    """Prompt and generated ids up to and including the first eos. What follows an early stop is fill:
    we fill with pad_token_id; transformers' beam search fills with eos when pad_token_id is 0 (it tests
    ``pad_token_id or eos``)."""
    for i in range(prompt_len, len(ids)):
        if ids[i] in eos:
            return ids[: i + 1], ids[i + 1:]
    return ids, []


def _case_id(case):
    kw = ",".join(f"{k}={v}" for k, v in case["kwargs"].items() if k not in ("do_sample",))
    return f"{case['model']}-{len(case['prompts'])}prompts-{kw}"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_generate_equals_transformers(case):
    model = _model(case["model"])
    kwargs = dict(case["kwargs"])
    if kwargs.get("eos_token_id") is None:
        kwargs["eos_token_id"] = []  # transformers' None: never stop early
    out = model.generate(case["prompts"], pad_token_id=0, **kwargs)
    width = max(len(p) for p in case["prompts"])
    per_prompt = kwargs.get("num_return_sequences", 1)
    expected = case["output"]
    assert len(out) == len(expected)
    eos = kwargs["eos_token_id"] if isinstance(kwargs["eos_token_id"], list) else [kwargs["eos_token_id"]]
    for i, (row, ref) in enumerate(zip(out, expected)):
        prompt_len = len(case["prompts"][i // per_prompt])
        ours, our_fill = _until_eos([int(t) for t in row[width - prompt_len:]], prompt_len, eos)
        theirs, _ = _until_eos(ref, prompt_len, eos)
        assert ours == theirs, (i, ours, theirs)
        assert all(t == 0 for t in our_fill)


def test_without_cache_equals_with_cache_and_reference():
    model = _model("llama")
    ids = np.load(os.path.join(INTEROP, "llama", "input_ids.npy"))
    ref = np.load(os.path.join(INTEROP, "llama", "generate_base.npy"))
    for use_cache in (True, False):
        np.testing.assert_array_equal(model.generate(ids, max_new_tokens=12, eos_token_id=[], use_cache=use_cache), ref)
    model.generation_mode = "jit"
    try:
        np.testing.assert_array_equal(model.generate(ids, max_new_tokens=12, eos_token_id=[]), ref)
    finally:
        model.generation_mode = MODE
    gpt2 = _model("gpt2")
    ids = np.load(os.path.join(INTEROP, "gpt2", "input_ids.npy"))
    ref = np.load(os.path.join(INTEROP, "gpt2", "generate_base.npy"))
    np.testing.assert_array_equal(gpt2.generate(ids, max_new_tokens=12, eos_token_id=[], use_cache=False), ref)
