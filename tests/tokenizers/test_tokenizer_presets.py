"""Tokenizers loaded by preset name: the preset's YAML states MindFormers' behaviour, a Hugging Face folder keeps
Hugging Face's."""

import json

import pytest

from mindformers import AutoTokenizer, list_presets
from mindformers.registry import UnknownNameError
from mindformers.tokenizers import GPT2Tokenizer, LlamaTokenizer, PreTrainedTokenizer, load_tokenizer
from mindformers.tokenizers.loading import presets_with_tokenizers

MINDFORMERS_GPT2_HELLO = {
    "input_ids": [50256, 31373, 0, 50256],
    "token_type_ids": [0, 0, 0, 0],
    "attention_mask": [1, 1, 1, 1],
}


def test_gpt2_preset_is_mindformers_gpt2_tokenizer(gpt2_dir):
    tok = GPT2Tokenizer.from_pretrained("gpt2")
    out = tok("hello!")
    assert out == MINDFORMERS_GPT2_HELLO and list(out) == ["input_ids", "token_type_ids", "attention_mask"]
    assert AutoTokenizer.from_pretrained("gpt2")("hello!") == MINDFORMERS_GPT2_HELLO
    assert type(PreTrainedTokenizer.from_pretrained("gpt2")) is GPT2Tokenizer  # the generic class takes any preset
    assert load_tokenizer("gpt2")("hello!") == MINDFORMERS_GPT2_HELLO
    assert (tok.add_bos_token, tok.add_eos_token, tok.pad_token_id) == (True, True, 50256)
    assert tok.model_input_names == ("input_ids", "token_type_ids", "attention_mask")
    # the same files as a Hugging Face folder: no BOS/EOS, no token_type_ids, no pad token
    assert GPT2Tokenizer.from_pretrained(gpt2_dir)("hello!") == {"input_ids": [31373, 0], "attention_mask": [1, 1]}
    assert AutoTokenizer.from_pretrained(gpt2_dir).pad_token is None


def test_gpt2_preset_batches_pairs_and_options(gpt2_dir):
    tok = GPT2Tokenizer.from_pretrained("gpt2")
    batch = tok(["hello!", "hi"], padding=True)
    assert batch["input_ids"] == [[50256, 31373, 0, 50256], [50256, 5303, 50256, 50256]]  # padded with 50256
    assert batch["attention_mask"] == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["token_type_ids"] == [[0, 0, 0, 0], [0, 0, 0, 0]]
    pair = tok("hello", "world")
    assert pair["input_ids"] == [50256, 31373, 50256, 50256, 6894, 50256]
    assert pair["token_type_ids"] == [0, 0, 0, 1, 1, 1]
    without_types = {"input_ids": [50256, 31373, 0, 50256], "attention_mask": [1, 1, 1, 1]}
    assert tok("hello!", return_token_type_ids=False) == without_types
    assert tok.encode("hello!") == [50256, 31373, 0, 50256]
    assert tok.encode("hello!", add_special_tokens=False) == [31373, 0]
    assert tok.decode(tok.encode("hello!"), skip_special_tokens=True) == "hello!"
    # options passed to from_pretrained override the preset's
    plain = GPT2Tokenizer.from_pretrained("gpt2", add_bos_token=False, add_eos_token=False)
    assert plain("hello!")["input_ids"] == [31373, 0]


def test_saved_preset_tokenizer_keeps_its_behaviour(tmp_path):
    tok = GPT2Tokenizer.from_pretrained("gpt2")
    tok.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    # transformers' own key for the returned fields, so it returns token_type_ids too
    assert config["model_input_names"] == ["input_ids", "token_type_ids", "attention_mask"]
    assert load_tokenizer(str(tmp_path))("hello!") == MINDFORMERS_GPT2_HELLO


def test_every_tokenizer_class_loads_the_presets_of_its_class(smollm2_gguf, gpt2_dir):
    assert presets_with_tokenizers() == [
        "gpt2", "gpt2_13b", "gpt2_large", "gpt2_medium", "gpt2_xl", "mistral_7b", "mixtral_8x7b", "smollm2_135m_instruct"
    ]
    assert set(presets_with_tokenizers()) <= set(list_presets())
    smollm2 = LlamaTokenizer.from_pretrained("smollm2_135m_instruct")
    assert type(smollm2) is LlamaTokenizer
    assert smollm2("hello!") == {"input_ids": [28120, 17], "attention_mask": [1, 1]}
    assert AutoTokenizer.from_pretrained("smollm2_135m_instruct")("hello!") == smollm2("hello!")
    assert type(GPT2Tokenizer.from_pretrained("gpt2")) is GPT2Tokenizer
    for size in ("gpt2_medium", "gpt2_large", "gpt2_xl", "gpt2_13b"):  # the gpt2 preset's tokenizer section
        assert GPT2Tokenizer.from_pretrained(size)("hello!") == MINDFORMERS_GPT2_HELLO


def test_mistral_presets_tokenize_as_mistral_7b(mistral, texts):
    """mistral_7b and mixtral_8x7b: Mistral's v1 sentencepiece model from the assets, with <s> before each text
    and no </s> after, as a Mistral-7B-v0.1 folder (its tokenizer.model and tokenizer_config.json) gives."""
    preset = LlamaTokenizer.from_pretrained("mistral_7b")
    assert type(preset) is LlamaTokenizer and preset("Hello world!")["input_ids"] == [1, 22557, 1526, 28808]
    assert (preset.bos_token_id, preset.eos_token_id, preset.pad_token, preset.vocab_size) == (1, 2, None, 32000)
    assert [preset.encode(text) for text in texts] == [mistral.encode(text) for text in texts]
    mixtral = AutoTokenizer.from_pretrained("mixtral_8x7b")
    assert [mixtral.encode(text) for text in texts] == [mistral.encode(text) for text in texts]


def test_preset_errors(gpt2_dir):
    wrong_class = (
        r"preset 'gpt2' has a GPT2Tokenizer, not a LlamaTokenizer; load it with "
        r"GPT2Tokenizer.from_pretrained\('gpt2'\) or AutoTokenizer.from_pretrained\('gpt2'\)"
    )
    with pytest.raises(TypeError, match=wrong_class):
        LlamaTokenizer.from_pretrained("gpt2")
    with pytest.raises(TypeError, match="preset 'smollm2_135m_instruct' has a LlamaTokenizer, not a GPT2Tokenizer"):
        GPT2Tokenizer.from_pretrained("smollm2_135m_instruct")
    no_tokenizer = (
        r"preset 'llama2_7b' defines no tokenizer \(.*predict_llama2_7b.yaml has no processor.tokenizer section\); "
        r"presets with a tokenizer: gpt2, gpt2_13b, gpt2_large, gpt2_medium, gpt2_xl, mistral_7b, mixtral_8x7b, "
        r"smollm2_135m_instruct"
    )
    with pytest.raises(ValueError, match=no_tokenizer):
        GPT2Tokenizer.from_pretrained("llama2_7b")
    unknown = "'gtp2' is neither a local path nor a known preset; known presets: deepseek_v3, gpt2, gpt2_13b, "
    with pytest.raises(UnknownNameError, match=unknown):
        GPT2Tokenizer.from_pretrained("gtp2")
    # what looks like a path is never taken for a preset
    with pytest.raises(FileNotFoundError, match="no tokenizer directory or file at gpt2.json"):
        GPT2Tokenizer.from_pretrained("gpt2.json")


def test_prompts_get_no_closing_eos(gpt2_dir):
    """Generation prompts keep the BOS the gpt2 preset adds but not its EOS (the text goes on); a Hugging
    Face directory's prompts are what its tokenizer gives."""
    from mindformers import AutoTokenizer

    preset = AutoTokenizer.from_pretrained("gpt2")
    assert preset.encode_prompts(["hello!", "hi"]) == [[50256, 31373, 0], [50256, 5303]]
    assert AutoTokenizer.from_pretrained(gpt2_dir).encode_prompts(["hello!"]) == [[31373, 0]]
