"""``tokenizer(...)``: batches, padding, truncation, tensors, and the errors for bad input."""

import copy

import numpy as np
import pytest


@pytest.fixture(scope="module")
def gpt2_padded(gpt2):
    tok = copy.copy(gpt2)
    tok.pad_token = tok.eos_token
    return tok


@pytest.fixture(scope="module")
def mistral_padded(mistral):
    tok = copy.copy(mistral)
    tok.pad_token = "</s>"
    return tok


def batch_call(tok, texts, case):
    kwargs = {
        "longest_right": dict(padding=True, padding_side="right"),
        "longest_left": dict(padding=True, padding_side="left"),
        "max_length_6": dict(padding="max_length", truncation=True, max_length=6),
        "truncate_3": dict(truncation=True, max_length=3),
        "np_max_length_5": dict(padding="max_length", truncation=True, max_length=5, return_tensors="np"),
    }[case]
    return tok(texts, **kwargs)


@pytest.mark.parametrize("name", ["gpt2_padded", "mistral_padded", "smollm2"])
@pytest.mark.parametrize("case", ["longest_right", "longest_left", "max_length_6", "truncate_3", "np_max_length_5"])
def test_padding_and_truncation_equal_transformers(request, name, case):
    tok = request.getfixturevalue(name)
    ref = request.getfixturevalue(
        {"gpt2_padded": "gpt2_ref", "mistral_padded": "mistral_ref", "smollm2": "smollm2_ref"}[name]
    )
    batch = ref["batch"]
    assert tok.padding_side == batch["padding_side_default"]
    out = batch_call(tok, batch["texts"], case)
    expected = batch["cases"][case]
    if case == "np_max_length_5":
        assert out["input_ids"].dtype == np.int64 and out["input_ids"].shape == (3, 5)
        assert out["input_ids"].tolist() == expected["input_ids"]
    else:
        assert out["input_ids"] == expected["input_ids"]
        assert out["attention_mask"] == expected["attention_mask"]


def test_single_text_gives_flat_lists(smollm2):
    out = smollm2("Hello world")
    assert out == {"input_ids": [19556, 905], "attention_mask": [1, 1]}
    assert smollm2("Hello world", padding=True) == out  # "longest" of one sequence changes nothing
    assert smollm2("Hello world", return_attention_mask=False) == {"input_ids": [19556, 905]}


def test_right_and_left_padding_to_max_length(smollm2):
    right = smollm2(["Hello world", "Hi"], padding="max_length", max_length=5)
    assert right["input_ids"] == [[19556, 905, 2, 2, 2], [26843, 2, 2, 2, 2]]
    assert right["attention_mask"] == [[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]]
    left = smollm2(["Hello world", "Hi"], padding="max_length", max_length=5, padding_side="left")
    assert left["input_ids"] == [[2, 2, 2, 19556, 905], [2, 2, 2, 2, 26843]]
    assert left["attention_mask"] == [[0, 0, 0, 1, 1], [0, 0, 0, 0, 1]]
    assert smollm2(["ab"], padding=True, pad_to_multiple_of=4)["input_ids"] == [[369, 2, 2, 2]]


def test_truncation_rules(mistral, smollm2):
    text = "A longer sentence with more tokens in it."
    assert smollm2(text, max_length=3)["input_ids"] == [49, 2848, 6330]  # max_length alone truncates
    assert len(smollm2(text, max_length=3, truncation=False)["input_ids"]) == 9
    # max_length counts special tokens: BOS stays, the text is cut
    assert mistral(text, truncation=True, max_length=3)["input_ids"] == [1, 330, 3774]
    left = copy.copy(smollm2)
    left.truncation_side = "left"
    assert left(text, truncation=True, max_length=3)["input_ids"] == [281, 357, 30]
    # truncation=True without max_length uses model_max_length (8192 from the GGUF): nothing is cut here
    assert len(smollm2(text, truncation=True)["input_ids"]) == 9


def test_text_pairs(smollm2):
    out = smollm2("Hello world", "Hi", truncation="only_first", max_length=2)
    assert out["input_ids"] == [19556, 26843]
    batch = smollm2(["Hello", "Hi"], ["world", "there"])
    assert batch["input_ids"] == [
        smollm2.encode("Hello") + smollm2.encode("world"),
        smollm2.encode("Hi") + smollm2.encode("there"),
    ]


def test_return_tensors_np_and_ms(smollm2):
    import mindspore as ms

    texts = ["Hello world", "A longer sentence with more tokens in it."]
    np_out = smollm2(texts, padding=True, return_tensors="np")
    assert np_out["input_ids"].dtype == np.int64 and np_out["input_ids"].shape == (2, 9)
    assert np_out["attention_mask"].dtype == np.int64 and np_out["attention_mask"].sum() == 11
    ms_out = smollm2(texts, padding="max_length", max_length=12, return_tensors="ms")
    assert isinstance(ms_out["input_ids"], ms.Tensor)
    assert ms_out["input_ids"].dtype == ms.int32 and ms_out["input_ids"].shape == (2, 12)
    assert ms_out["attention_mask"].dtype == ms.int32
    assert ms_out["input_ids"].asnumpy()[:, :9].tolist() == np_out["input_ids"].tolist()
    # a single text gets a batch axis, as in transformers
    single = smollm2("Hello world", return_tensors="np")
    assert single["input_ids"].shape == (1, 2) and single["input_ids"].tolist() == [[19556, 905]]
    assert smollm2.encode("Hello world", return_tensors="ms").shape == (1, 2)
    assert smollm2([], return_tensors="np")["input_ids"].shape == (0, 0)


def test_decode_accepts_arrays_and_tensors(smollm2):
    import mindspore as ms

    ids = smollm2(["Hello world", "Hi"], padding=True, return_tensors="ms")["input_ids"]
    assert smollm2.batch_decode(ids, skip_special_tokens=True) == ["Hello world", "Hi"]
    assert smollm2.batch_decode(ids.asnumpy()) == ["Hello world", "Hi<|im_end|>"]
    assert smollm2.decode(ids[0]) == "Hello world"
    assert smollm2.decode(np.array([19556, 905])) == "Hello world"
    assert smollm2.decode(19556) == "Hello"
    assert smollm2.decode(ms.Tensor(np.array([905], np.int64))) == " world"


def test_add_tokens_and_special_tokens(gpt2):
    tok = copy.copy(gpt2)
    assert tok.add_special_tokens({"pad_token": "<pad>"}) == 1
    assert tok.pad_token == "<pad>" and tok.pad_token_id == 50257 and len(tok) == 50258
    assert tok.vocab_size == 50257  # the base vocabulary does not grow
    assert tok.add_tokens(["<tool>", "Hello"]) == 2  # as transformers counts; "Hello" keeps its id
    assert len(tok) == 50259 and tok.convert_tokens_to_ids("Hello") == 15496
    assert tok.encode("x<tool>y<pad>") == [87, 50258, 88, 50257]
    assert tok.decode([87, 50258, 88, 50257], skip_special_tokens=True) == "x<tool>y"
    assert tok.add_special_tokens({"additional_special_tokens": ["<tool>"]}) == 0
    assert "<tool>" in tok.all_special_tokens and 50258 in tok.all_special_ids
    tok.pad_token_id = 50256
    assert tok.pad_token == "<|endoftext|>"


def test_add_bos_eos_settings_rebuild_post_processor(smollm2):
    tok = copy.copy(smollm2)
    tok.add_bos_token = True
    tok.add_eos_token = True
    assert tok.encode("Hi") == [1, 26843, 2]
    assert tok.encode("Hi", add_special_tokens=False) == [26843]
    assert smollm2.encode("Hi") == [26843]


# ---------------------------------------------------------------------------------------------- errors


def test_padding_without_pad_token_says_how_to_fix(gpt2):
    with pytest.raises(
        ValueError, match=r"padding='longest' needs a pad token.*tokenizer.pad_token = tokenizer.eos_token"
    ):
        gpt2(["a", "bb"], padding=True)


def test_bad_arguments_are_explained(smollm2, gpt2):
    with pytest.raises(ValueError, match=r"return_tensors must be one of \(None, 'np', 'ms'\).*got 'pt'"):
        smollm2("hi", return_tensors="pt")
    with pytest.raises(
        ValueError, match="padding must be False/'do_not_pad', True/'longest' or 'max_length'; got 'max'"
    ):
        smollm2("hi", padding="max")
    with pytest.raises(ValueError, match="truncation must be"):
        smollm2("hi", truncation="sometimes")
    with pytest.raises(
        TypeError, match=r"text must be a string or a list of strings, found a list holding \['int', 'str'\]"
    ):
        smollm2(["hi", 3])
    with pytest.raises(TypeError, match="text must be a string or a list of strings, found int"):
        smollm2(5)
    with pytest.raises(ValueError, match="different lengths"):
        smollm2(["Hello world", "Hi"], return_tensors="np")
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right', got 'middle'"):
        smollm2(["a"], padding=True, padding_side="middle")
    with pytest.raises(ValueError, match="padding='max_length' needs a length"):
        tok = copy.copy(smollm2)
        tok.model_max_length = 10**30
        tok(["a"], padding="max_length")
    bos = copy.copy(smollm2)
    bos.add_bos_token = True
    assert bos("hello", truncation=True, max_length=1)["input_ids"] == [1]  # only BOS fits, as in transformers
    with pytest.raises(ValueError, match=r"max_length=0 is shorter than the 1 special token\(s\)"):
        bos("hello", truncation=True, max_length=0)
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 49152\).*-100"):
        smollm2.decode([1, -100])
    with pytest.raises(ValueError, match="use batch_decode"):
        smollm2.decode([[1, 2]])
    with pytest.raises(
        ValueError, match=r"'<nope>' is not in the vocabulary.*add_special_tokens\(\{'pad_token': '<nope>'\}\)"
    ):
        copy.copy(gpt2).pad_token = "<nope>"
    with pytest.raises(TypeError, match="encode takes one string"):
        smollm2.encode(["a", "b"])
    with pytest.raises(ValueError, match=r"unknown special token name\(s\) \['sep_token'\]"):
        copy.copy(gpt2).add_special_tokens({"sep_token": "x"})
