"""save_pretrained / from_pretrained round trips, ``load_tokenizer`` sources, and loading errors."""

import json
import os
import shutil
import struct

import pytest

from mindformers.registry import TOKENIZERS
from mindformers.tokenizers import (
    GPT2Tokenizer,
    LlamaTokenizer,
    PreTrainedTokenizer,
    load_tokenizer,
    read_sentencepiece_model,
)


@pytest.mark.parametrize("name", ["gpt2", "mistral", "smollm2"])
def test_save_then_load_gives_same_ids(request, tmp_path, name, texts):
    tok = request.getfixturevalue(name)
    written = tok.save_pretrained(tmp_path / "saved")
    names = sorted(os.path.basename(p) for p in written)
    # a tokenizers backend is saved as tokenizer.json, a sentencepiece one as the tokenizer.model it read
    backend_file = "tokenizer.model" if name == "mistral" else "tokenizer.json"
    expected = ["special_tokens_map.json", backend_file, "tokenizer_config.json"]
    assert names == sorted(expected + (["chat_template.jinja"] if tok.chat_template else []))
    assert sorted(os.listdir(tmp_path / "saved")) == names  # atomic writes leave no temporary files

    back = load_tokenizer(str(tmp_path / "saved"))
    # tokenizer_class "TokenizersBackend" is the generic class; a sentencepiece save names its own class
    assert type(back) is (LlamaTokenizer if name == "mistral" else PreTrainedTokenizer)
    assert back(texts)["input_ids"] == tok(texts)["input_ids"]
    assert back.batch_decode(tok(texts[:40])["input_ids"]) == tok.batch_decode(tok(texts[:40])["input_ids"])
    for attr in (
        "bos_token",
        "eos_token",
        "unk_token",
        "pad_token",
        "add_bos_token",
        "model_max_length",
        "padding_side",
        "chat_template",
        "vocab_size",
    ):
        assert getattr(back, attr) == getattr(tok, attr), attr
    assert len(back) == len(tok)
    # an explicit class keeps its defaults but the saved padding side wins
    assert type(type(tok).from_pretrained(str(tmp_path / "saved"))) is type(tok)


def test_saved_config_is_what_transformers_reads(mistral, smollm2, tmp_path):
    mistral.save_pretrained(tmp_path)
    with open(os.path.join(mistral.name_or_path, "tokenizer.model"), "rb") as f:
        assert (tmp_path / "tokenizer.model").read_bytes() == f.read()
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "LlamaTokenizer"  # transformers builds its LlamaTokenizer from the .model
    assert config["add_bos_token"] is True and config["bos_token"] == "<s>" and config["padding_side"] == "left"
    assert config["model_input_names"] == ["input_ids", "attention_mask"]
    assert config["added_tokens_decoder"]["1"] == {
        "content": "<s>",
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }
    assert json.loads((tmp_path / "special_tokens_map.json").read_text()) == {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
    }
    smollm2.save_pretrained(tmp_path / "smollm2")
    config = json.loads((tmp_path / "smollm2" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "TokenizersBackend"  # transformers loads tokenizer.json as it is
    backend = json.loads((tmp_path / "smollm2" / "tokenizer.json").read_text())
    assert [step["type"] for step in backend["pre_tokenizer"]["pretokenizers"]] == ["Digits", "ByteLevel"]


def test_save_overwrites_in_place_and_refuses_a_file(gpt2, tmp_path):
    gpt2.save_pretrained(tmp_path)
    gpt2.save_pretrained(tmp_path)  # overwriting is fine
    assert len(os.listdir(tmp_path)) == 3
    with pytest.raises(NotADirectoryError, match="needs a directory"):
        gpt2.save_pretrained(tmp_path / "tokenizer.json")


def test_hf_layout_directory_with_config_files(tmp_path, gpt2_dir, texts, gpt2):
    """vocab.json + merges.txt + tokenizer_config.json + special_tokens_map.json, as the GPT-2 assets have."""
    tok = load_tokenizer(gpt2_dir)
    assert type(tok) is GPT2Tokenizer  # tokenizer_config.json names GPT2Tokenizer
    assert tok.model_max_length == 1024 and tok(texts)["input_ids"] == gpt2(texts)["input_ids"]
    # the "Fast" variant of a class name maps to our class; a class we do not have loads as the generic one
    folder = tmp_path / "fast"
    shutil.copytree(gpt2_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "GPT2TokenizerFast"}))
    assert type(load_tokenizer(str(folder))) is GPT2Tokenizer
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "BertTokenizer"}))
    assert type(load_tokenizer(str(folder))) is PreTrainedTokenizer
    # special_tokens_map.json wins over tokenizer_config.json (transformers v4); keyword arguments win over both
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "<|endoftext|>"}}))
    assert load_tokenizer(str(folder)).pad_token_id == 50256
    assert load_tokenizer(str(folder), pad_token=None, padding_side="left").padding_side == "left"


def test_chat_template_jinja_and_added_tokens_decoder(tmp_path, mistral_dir):
    folder = tmp_path / "m"
    folder.mkdir()
    os.symlink(os.path.join(mistral_dir, "tokenizer.model"), folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "add_bos_token": True,
                "chat_template": "from config",
                "added_tokens_decoder": {
                    "32000": {"content": "<|tool|>", "special": True},
                    "2": {"content": "</s>", "special": True},
                },
                "clean_up_tokenization_spaces": False,
                "sp_model_kwargs": {},  # keys we do not use are ignored
            }
        )
    )
    (folder / "chat_template.jinja").write_text("{{ bos_token }}{{ messages[0]['content'] }}")
    tok = load_tokenizer(str(folder))
    assert isinstance(tok, LlamaTokenizer) and len(tok) == 32001
    assert tok.encode("a<|tool|>") == [1, 264, 32000]
    assert tok.decode([1, 264, 32000], skip_special_tokens=True) == "a"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<s>hi"  # .jinja wins
    (folder / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {"32005": {"content": "<x>"}}}))
    with pytest.raises(ValueError, match="'<x>' should have id 32005, but the next free id is 32000"):
        load_tokenizer(str(folder))


def test_load_tokenizer_sources(gpt2, smollm2, smollm2_gguf, gpt2_dir, texts):
    section = {"type": "GPT2Tokenizer", "vocab_file": "assets:gpt2/vocab.json", "merges_file": "assets:gpt2/merges.txt"}
    tok = load_tokenizer(section)
    assert type(tok) is GPT2Tokenizer and tok(texts)["input_ids"] == gpt2(texts)["input_ids"]
    assert load_tokenizer(section, pad_token="<|endoftext|>").pad_token_id == 50256  # kwargs override the section
    assert load_tokenizer({"type": "GPT2Tokenizer", "path": gpt2_dir}).model_max_length == 1024
    assert load_tokenizer(smollm2) is smollm2
    folder = os.path.dirname(smollm2_gguf)
    by_dir = load_tokenizer(
        {"type": "PreTrainedTokenizer", "path": folder, "gguf_file": os.path.basename(smollm2_gguf)}
    )
    assert by_dir(texts[:30])["input_ids"] == smollm2(texts[:30])["input_ids"]
    assert "PreTrainedTokenizer" in TOKENIZERS and "GPT2Tokenizer" in TOKENIZERS and "LlamaTokenizer" in TOKENIZERS


def test_load_tokenizer_errors(tmp_path, smollm2):
    with pytest.raises(
        ValueError, match=r"unknown key\(s\) \['vocab'\] in the GPT2Tokenizer section; valid keys: .*'merges_file'"
    ):
        load_tokenizer({"type": "GPT2Tokenizer", "vocab": "x"})
    with pytest.raises(KeyError, match="unknown tokenizer 'Gpt2Tok'.*GPT2Tokenizer.*LlamaTokenizer"):
        load_tokenizer({"type": "Gpt2Tok"})
    with pytest.raises(ValueError, match="a tokenizer section needs `type`"):
        load_tokenizer({"vocab_file": "x"})
    with pytest.raises(FileNotFoundError, match="run `python scripts/get_assets.py`"):
        load_tokenizer({"type": "GPT2Tokenizer", "vocab_file": "assets:nope/vocab.json"})
    with pytest.raises(ValueError, match="needs its merges: pass merges_file="):
        load_tokenizer({"type": "GPT2Tokenizer", "vocab_file": "assets:gpt2/vocab.json"})
    with pytest.raises(ValueError, match="no tokenizer file given"):
        load_tokenizer({"type": "GPT2Tokenizer"})
    with pytest.raises(ValueError, match=r"unknown tokenizer option\(s\) \['max_len'\]"):
        GPT2Tokenizer.from_files(vocab_file="vocab.json", max_len=3)
    with pytest.raises(ValueError, match="cannot be applied to an already built tokenizer"):
        load_tokenizer(smollm2, pad_token="x")
    with pytest.raises(TypeError, match="takes a path, a dict"):
        load_tokenizer(3)

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(
        FileNotFoundError,
        match=r"no tokenizer files in .*looked for tokenizer.json, tokenizer.model, "
        r"vocab.json \+ merges.txt, or one \*.gguf; found \['config.json', 'vocab.json'\]",
    ):
        load_tokenizer(str(tmp_path))
    (tmp_path / "a.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 1, 0, 0))
    (tmp_path / "b.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1))
    with pytest.raises(
        FileNotFoundError, match=r"several GGUF files \['a.gguf', 'b.gguf'\]: choose one with gguf_file"
    ):
        load_tokenizer(str(tmp_path))
    with pytest.raises(ValueError, match="GGUF version 1 is not supported"):
        load_tokenizer(str(tmp_path / "a.gguf"))
    with pytest.raises(ValueError, match=r"not a valid GGUF file \(corrupt or truncated\?\)"):
        load_tokenizer(str(tmp_path / "b.gguf"))
    (tmp_path / "c.gguf").write_bytes(b"nope")
    with pytest.raises(ValueError, match="is not a GGUF file"):
        load_tokenizer(str(tmp_path / "c.gguf"))
    (tmp_path / "bad.model").write_bytes(b"\xff\xff\xff")
    with pytest.raises(ValueError, match=r"cannot load the model from .*bad.model: not a serialized ModelProto"):
        load_tokenizer(str(tmp_path / "bad.model"))
    (tmp_path / "tokenizer.json").write_text("{")
    with pytest.raises(ValueError, match="is not a tokenizers serialization"):
        load_tokenizer(str(tmp_path / "tokenizer.json"))
    with pytest.raises(FileNotFoundError, match="no tokenizer directory or file"):
        PreTrainedTokenizer.from_pretrained(str(tmp_path / "missing"))
    with pytest.raises(TypeError, match="tokenizer_object must be a tokenizers.Tokenizer"):
        PreTrainedTokenizer("tokenizer.json")


def test_sentencepiece_model_fields(mistral_dir):
    """Mistral's real tokenizer.model, read as sentencepiece's ModelProto."""
    model = read_sentencepiece_model(os.path.join(mistral_dir, "tokenizer.model"))
    pieces = model.pieces
    assert len(pieces) == 32000 and [p.piece for p in pieces[:4]] == ["<unk>", "<s>", "</s>", "<0x00>"]
    assert [p.type for p in pieces[:4]] == [2, 3, 3, 6]  # unknown, control, control, byte
    trainer = model.trainer_spec
    assert (trainer.model_type, trainer.byte_fallback) == (2, True)  # BPE
    assert (trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id) == (0, 1, 2, -1)
    assert (model.normalizer_spec.add_dummy_prefix, model.normalizer_spec.remove_extra_whitespaces) == (True, False)


def test_llama_gguf_vocabulary_matches_model_file(tmp_path, mistral_dir, mistral, texts):
    """A sentencepiece vocabulary stored in a GGUF (tokenizer.ggml.model = 'llama') gives the .model's ids."""
    gguf = pytest.importorskip("gguf")
    model = read_sentencepiece_model(os.path.join(mistral_dir, "tokenizer.model"))
    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list([p.piece for p in model.pieces])
    writer.add_token_scores([p.score for p in model.pieces])
    writer.add_token_types([p.type for p in model.pieces])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    tok = load_tokenizer(str(tmp_path / "m.gguf"))
    assert tok.add_bos_token  # llama.cpp's default for sentencepiece vocabularies
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")
    # the vocabulary goes back into a sentencepiece model: the same ids and text as the .model file
    ours = tok(texts, add_special_tokens=False)["input_ids"]
    assert ours == mistral(texts, add_special_tokens=False)["input_ids"]
    assert tok.batch_decode(ours) == mistral.batch_decode(ours)
    assert tok.tokenize("are.  We") == ["▁are", ".", "▁", "▁We"]


@pytest.mark.parametrize("name", ["gpt2", "mistral", "smollm2"])
def test_reads_the_config_files_transformers_writes(request, tmp_path, name, texts, hf_saved_configs, mistral_ref):
    """Our tokenizer.json beside the tokenizer_config.json (and chat_template.jinja) transformers 5 saves."""
    tok = request.getfixturevalue(name)
    tok.save_pretrained(tmp_path)
    for fname in ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (tmp_path / fname).unlink(missing_ok=True)
    for fname, text in hf_saved_configs[name].items():
        (tmp_path / fname).write_text(text, encoding="utf-8")
    back = load_tokenizer(str(tmp_path))
    assert type(back) is type(tok)  # tokenizer_class: GPT2Tokenizer / LlamaTokenizer / TokenizersBackend
    assert back(texts, add_special_tokens=False)["input_ids"] == tok(texts, add_special_tokens=False)["input_ids"]
    for attr in ("bos_token", "eos_token", "unk_token", "pad_token", "chat_template", "padding_side"):
        assert getattr(back, attr) == getattr(tok, attr), attr
    # transformers 5 keeps add_bos_token in tokenizer.json's post-processor, not in tokenizer_config.json: beside
    # a tokenizer.model nothing says to add BOS, and transformers adds none there either (bare_dir)
    adds_bos = tok.add_bos_token and name != "mistral"
    assert back.add_bos_token is adds_bos
