"""sentencepiece models give sentencepiece's own ids and text: llama.cpp's Llama test vectors on a ``.model`` and
on llama.cpp's GGUF, special tokens between runs of text, offsets, batches, added tokens, saving."""

import copy
import hashlib
import io
import json
import os

import pytest

from mindformers.tokenizers import LlamaTokenizer, PreTrainedTokenizer, load_tokenizer
from mindformers.tokenizers.sentencepiece import SentencePieceTokenizer
from tests.tokenizers.conftest import LLAMA_SPM, require_asset

SEPARATOR = "\n__ggml_vocab_test__\n"


def read_llama_cpp_vectors():
    """llama.cpp's test strings and expected ids, split as its tests/test-tokenizer-0.cpp splits them."""
    with open(os.path.join(LLAMA_SPM, "ggml-vocab-llama-spm.gguf.inp"), encoding="utf-8", newline="") as f:
        raw = f.read()
    texts, pos = [], 0
    while pos < len(raw):
        found = raw.find(SEPARATOR, pos)
        if found < 0:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:found])
        pos = found + len(SEPARATOR)
    with open(os.path.join(LLAMA_SPM, "ggml-vocab-llama-spm.gguf.out"), encoding="utf-8") as f:
        ids = [[int(t) for t in line.split()] for line in f.read().splitlines()]
    return texts, ids


def first_mismatch(ours, expected, texts):
    for text, a, b in zip(texts, ours, expected):
        if a != b:
            return f"{text!r}: ours {a} expected {b}"
    return None


def sentencepiece_processor(path):
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=path)


def test_llama_cpp_vectors_are_read_as_llama_cpp_reads_them(llama_spm_ref):
    texts, ids = read_llama_cpp_vectors()
    assert len(texts) == len(ids) == 46  # the file's trailing separator ends the list (no 47th, empty string)
    assert texts == llama_spm_ref["texts"] and ids == llama_spm_ref["llama_cpp_ids"]
    assert texts[2:10] == ["", " ", "  ", "   ", "\t", "\n", "\n\n", "\n\n\n"]
    assert " Hello world" in texts and "    Hello\n    Hello" in texts and len(max(texts, key=len)) > 300
    # sentencepiece on the model rebuilt from llama.cpp's GGUF gives llama.cpp's ids for every string
    assert llama_spm_ref["sentencepiece_equals_llama_cpp"] == 46
    assert llama_spm_ref["sentencepiece"]["llama_spm"]["ids"] == ids


@pytest.mark.parametrize("model", ["llama_spm", "mistral"])
def test_model_file_gives_sentencepiece_ids_and_text_on_llama_cpp_vectors(model, llama_spm_ref, llama_spm_model):
    path = llama_spm_model if model == "llama_spm" else require_asset("mistral/tokenizer.model")
    expected = llama_spm_ref["sentencepiece"][model]
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == expected["model_sha256"]  # the model the fixture used
    tok = load_tokenizer(path)
    assert isinstance(tok, LlamaTokenizer) and isinstance(tok.backend_tokenizer, SentencePieceTokenizer)
    texts = llama_spm_ref["texts"]
    batch = tok(texts, add_special_tokens=False)["input_ids"]
    assert first_mismatch(batch, expected["ids"], texts) is None
    assert [tok.encode(t, add_special_tokens=False) for t in texts] == expected["ids"]
    assert tok.batch_decode(expected["ids"]) == expected["decoded"]
    assert [tok.decode(tok.encode(t, add_special_tokens=False)) for t in texts] == expected["decoded"]
    assert expected["decoded"] == texts  # an identity normalizer gives every string back


def test_leading_and_repeated_spaces_keep_the_dummy_prefix(llama_spm_model):
    """The cases a tokenizers conversion (transformers 5) gets wrong: text that starts with spaces."""
    tok = load_tokenizer(llama_spm_model)
    assert tok.encode("Hello world") == [15043, 3186]
    assert tok.encode(" Hello world") == [29871, 15043, 3186]  # transformers 5: [15043, 3186]
    assert tok.encode("   Hello") == [1678, 15043]
    assert tok.tokenize("   Hello") == ["▁▁▁", "▁Hello"]
    assert tok.encode(" ") == [259] and tok.encode("") == []
    assert tok.decode([29871, 15043, 3186]) == " Hello world"  # the space survives decoding


def test_gguf_sentencepiece_vocabulary_gives_llama_cpp_ids(llama_spm_gguf, llama_spm_model, llama_spm_ref, texts):
    tok = load_tokenizer(llama_spm_gguf)
    assert type(tok) is PreTrainedTokenizer and isinstance(tok.backend_tokenizer, SentencePieceTokenizer)
    assert tok.add_bos_token and (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")
    vectors, llama_cpp_ids = llama_spm_ref["texts"], llama_spm_ref["llama_cpp_ids"]
    ours = tok(vectors, add_special_tokens=False)["input_ids"]
    assert first_mismatch(ours, llama_cpp_ids, vectors) is None
    assert tok.encode(" Hello world") == [1, 29871, 15043, 3186]  # llama.cpp adds BOS: the GGUF says so
    assert tok.batch_decode(llama_cpp_ids) == vectors
    # the GGUF and the .model rebuilt from it are the same tokenizer, on the 383-text corpus too
    from_model = load_tokenizer(llama_spm_model)
    assert tok(texts, add_special_tokens=False)["input_ids"] == from_model(texts, add_special_tokens=False)["input_ids"]
    assert type(LlamaTokenizer.from_pretrained(llama_spm_gguf)) is LlamaTokenizer


def test_special_tokens_in_text_split_it_into_runs(llama_spm_model):
    sp = sentencepiece_processor(llama_spm_model)
    tok = load_tokenizer(llama_spm_model)
    # sentencepiece alone spells "<s>" out; a tokenizer matches it whole, as llama.cpp (parse_special) does
    assert sp.encode("<s>") == [529, 29879, 29958]
    assert tok.encode("<s>") == [1]
    # each run of text between special tokens is sentencepiece's, with its own dummy prefix (llama.cpp's rule)
    assert tok.encode("<s>Hello</s>") == [1] + sp.encode("Hello") + [2] == [1, 15043, 2]
    assert tok.tokenize("a <s> b") == ["▁a", "▁", "<s>", "▁", "▁b"]
    assert tok.encode("a <s> b") == sp.encode("a ") + [1] + sp.encode(" b")
    # legacy=False (transformers' option): no dummy prefix on a run that follows a special token
    no_prefix = load_tokenizer(llama_spm_model, legacy=False)
    assert no_prefix.tokenize("<s>Hello") == ["<s>", "Hello"] and no_prefix.encode("<s>Hello") == [1, 10994]
    assert no_prefix.tokenize("a <s> b") == ["▁a", "▁", "<s>", "▁b"]
    assert no_prefix.encode(" Hello world") == [29871, 15043, 3186]  # the start of the text is as before


def test_decode_is_sentencepiece_decode_with_special_tokens_written_or_skipped(llama_spm_model):
    sp = sentencepiece_processor(llama_spm_model)
    tok = load_tokenizer(llama_spm_model, add_bos_token=True, add_eos_token=True)
    ids = tok.encode(" Hello world")
    assert ids == [1, 29871, 15043, 3186, 2]
    assert tok.decode(ids) == "<s> Hello world</s>"
    assert tok.decode(ids, skip_special_tokens=True) == sp.decode(ids) == " Hello world"
    # a skipped special token in the middle joins the runs on either side, as sentencepiece decodes them
    middle = [15043, 1, 3186]
    assert tok.decode(middle, skip_special_tokens=True) == sp.decode(middle) == "Hello world"
    assert tok.decode(middle) == "Hello<s>world"  # the round trip of encode("Hello<s>world")
    assert tok.encode("Hello<s>world", add_special_tokens=False) == middle
    # byte fallback: a character spelled in bytes, and a broken byte sequence as sentencepiece shows it
    assert tok.encode("🦙", add_special_tokens=False) == [29871, 243, 162, 169, 156]
    assert tok.decode([243, 162, 169, 156]) == "🦙"
    assert tok.decode([243, 162]) == sp.decode([243, 162]) == "\ufffd\ufffd"
    assert tok.batch_decode([[15043], [3186]]) == ["Hello", "world"]


def test_offsets_are_character_positions(llama_spm_model):
    backend = load_tokenizer(llama_spm_model).backend_tokenizer
    encoding = backend.encode("hé 🦙 <s>x", add_special_tokens=False)
    assert encoding.tokens == ["▁hé", "▁", "<0xF0>", "<0x9F>", "<0xA6>", "<0x99>", "▁", "<s>", "▁x"]
    assert encoding.offsets == [(0, 2), (2, 3), (3, 4), (3, 4), (3, 4), (3, 4), (4, 5), (5, 8), (8, 9)]
    pair = backend.encode("ab", "cd")
    assert pair.ids == [633, 14965] and pair.type_ids == [0, 1] and pair.offsets == [(0, 2), (0, 2)]
    batch = backend.encode_batch(["ab", ("ab", "cd")], add_special_tokens=False)
    assert [e.ids for e in batch] == [[633], [633, 14965]]


def test_special_tokens_around_a_sequence_equal_the_id_pipeline(llama_spm_model, texts):
    """Without truncation or padding BOS/EOS are put around the ids directly; the id pipeline gives the same."""
    backend = load_tokenizer(llama_spm_model, add_bos_token=True, add_eos_token=True).backend_tokenizer
    direct = backend.encode_batch(texts)
    backend.enable_truncation(10**6)  # a setting to apply: every sequence goes through the pipeline
    try:
        piped = backend.encode_batch(texts)
    finally:
        backend.no_truncation()
    for field in ("ids", "type_ids", "attention_mask", "special_tokens_mask", "sequence_ids", "offsets", "tokens"):
        assert [getattr(e, field) for e in direct] == [getattr(e, field) for e in piped], field
    assert direct[0].ids[0] == 1 and direct[0].ids[-1] == 2 and direct[0].special_tokens_mask[0] == 1


def test_padding_truncation_and_pairs_go_through_the_post_processor(llama_spm_model):
    tok = LlamaTokenizer.from_pretrained(llama_spm_model, add_bos_token=True, pad_token="</s>")
    out = tok([" Hello world", "Hi"], padding=True)  # LlamaTokenizer pads on the left
    assert out["input_ids"] == [[1, 29871, 15043, 3186], [2, 2, 1, 6324]]
    assert out["attention_mask"] == [[1, 1, 1, 1], [0, 0, 1, 1]]
    assert tok(" Hello world", truncation=True, max_length=3)["input_ids"] == [1, 29871, 15043]  # BOS is kept
    right = tok(["Hi"], padding="max_length", max_length=4, padding_side="right", return_tensors="np")
    assert right["input_ids"].tolist() == [[1, 6324, 2, 2]]
    assert tok("Hello", "world", return_token_type_ids=True) == {
        "input_ids": [1, 15043, 1, 3186],
        "token_type_ids": [0, 0, 1, 1],
        "attention_mask": [1, 1, 1, 1],
    }
    tok.add_eos_token = True
    assert tok.encode("Hi") == [1, 6324, 2]


def test_added_tokens_and_copies(llama_spm_model):
    tok = load_tokenizer(llama_spm_model)
    assert tok.add_tokens(["<|tool|>"], special_tokens=True) == 1 and len(tok) == 32001 and tok.vocab_size == 32000
    assert tok.encode("a<|tool|>b") == [263, 32000, 289]
    assert tok.tokenize("a<|tool|>b") == ["▁a", "<|tool|>", "▁b"]
    assert tok.decode([263, 32000, 289]) == "a<|tool|>b"
    assert tok.decode([263, 32000, 289], skip_special_tokens=True) == "a b"
    other = copy.copy(tok)
    other.add_tokens(["<|x|>"])
    assert len(other) == 32002 and len(tok) == 32001 and other.encode("<|x|>") == [32001]
    assert tok.encode("<|x|>") != [32001]


def test_save_writes_the_model_file_and_loads_back(tmp_path, llama_spm_model, llama_spm_ref):
    tok = LlamaTokenizer.from_pretrained(llama_spm_model, add_bos_token=True, legacy=False)
    tok.add_tokens(["<|tool|>"], special_tokens=True)
    written = sorted(os.path.basename(p) for p in tok.save_pretrained(tmp_path))
    assert written == ["special_tokens_map.json", "tokenizer.model", "tokenizer_config.json"]
    with open(llama_spm_model, "rb") as f:
        assert (tmp_path / "tokenizer.model").read_bytes() == f.read()  # the model as it was read
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "LlamaTokenizer" and config["legacy"] is False and config["add_bos_token"]
    assert config["added_tokens_decoder"]["32000"]["content"] == "<|tool|>"
    back = load_tokenizer(str(tmp_path))
    assert type(back) is LlamaTokenizer and len(back) == 32001
    texts = llama_spm_ref["texts"] + ["a<|tool|><s>b", "<s>Hello"]
    assert back(texts)["input_ids"] == tok(texts)["input_ids"]
    assert back.encode("<s>Hello") == [1, 1, 10994]  # legacy=False came back
    # a tokenizer.json in the folder would be read first, so a sentencepiece save refuses the folder
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(FileExistsError, match="holds a tokenizer.json, which loaders read before the tokenizer.model"):
        tok.save_pretrained(tmp_path)


def test_unigram_model_with_nfkc_and_whitespace_folding(tmp_path, texts):
    """Any sentencepiece model works, not only Llama-style BPE: a Unigram model with NFKC normalization."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([t for t in texts if t.strip()] * 3),
        model_writer=model,
        model_type="unigram",
        vocab_size=400,
        character_coverage=0.98,  # leave rare characters unknown, so unk occurs
        normalization_rule_name="nmt_nfkc",
        remove_extra_whitespaces=True,
        minloglevel=2,
    )
    path = tmp_path / "unigram.model"
    path.write_bytes(model.getvalue())
    sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    tok = load_tokenizer(str(path))
    # (the corpus's special-token strings are left out: sentencepiece spells "<s>" out, a tokenizer matches it)
    samples = [t for t in texts if not any(s in t for s in ("<s>", "</s>", "<unk>"))]
    samples += ["ｆｕｌｌ　ｗｉｄｔｈ", "  many   spaces  ", "unknown ✈ character"]
    ours = tok(samples, add_special_tokens=False)["input_ids"]
    assert first_mismatch(ours, [sp.encode(t) for t in samples], samples) is None
    assert tok.encode("ｆｕｌｌ", add_special_tokens=False) == sp.encode("full")  # NFKC folds full-width letters
    plain = [ids for ids in ours if sp.unk_id() not in ids]  # unk is a special token: written as "<unk>"
    assert tok.batch_decode(plain) == [sp.decode(ids) for ids in plain] and len(plain) > 300


def test_bad_sentencepiece_models(tmp_path):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.pieces.add(piece="a", score=0.0, type=1)  # no unknown piece: sentencepiece refuses the model
    (tmp_path / "no_unk.model").write_bytes(proto.SerializeToString())
    with pytest.raises(ValueError, match=r"sentencepiece cannot load the model from .*no_unk.model: .*unk"):
        load_tokenizer(str(tmp_path / "no_unk.model"))
    (tmp_path / "empty.model").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.model is empty; expected a sentencepiece tokenizer.model"):
        load_tokenizer(str(tmp_path / "empty.model"))
    (tmp_path / "bad.model").write_bytes(b"\xff\xff\xff")
    with pytest.raises(ValueError, match=r"cannot load the model from .*bad.model: not a serialized ModelProto"):
        load_tokenizer(str(tmp_path / "bad.model"))
    with pytest.raises(TypeError, match="sentencepiece encodes strings, found int"):
        load_tokenizer(str(os.path.join(LLAMA_SPM, "tokenizer.model"))).backend_tokenizer.encode(3)
