"""scripts/prepare_chatterbot.py on the real corpus: counts, record shape, split, and that it feeds build_dataset."""

import importlib.util
import json
import os

import pytest

from mindformers.dataset import build_dataset
from mindformers.utils import ASSETS_DIR

SCRIPT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts", "prepare_chatterbot.py"
)
CORPUS = os.path.join(ASSETS_DIR, "chatterbot")


@pytest.fixture(scope="module")
def prepare():
    spec = importlib.util.spec_from_file_location("prepare_chatterbot", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def english(prepare, tmp_path_factory):
    if not os.path.isdir(os.path.join(CORPUS, "english")):
        pytest.skip(f"{CORPUS}/english is missing: run `python scripts/get_assets.py`")
    out = tmp_path_factory.mktemp("chatterbot")
    counts = prepare.main(["--out", str(out), "--languages", "english", "--eval-fraction", "0.1", "--seed", "0"])
    return out, counts


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_conversation_to_chat(prepare):
    assert prepare.conversation_to_chat(["Hi", " Hello! ", "Bye"]) == {
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    }
    assert prepare.conversation_to_chat(["lonely"]) is None
    assert prepare.conversation_to_chat(["q", ""]) is None


def test_english_corpus_becomes_train_and_eval_chats(english):
    out, counts = english
    train, evaluation = read_jsonl(out / "train.jsonl"), read_jsonl(out / "eval.jsonl")
    assert counts["chats"] > 800 and counts["train"] > 0 and counts["eval"] > 0
    assert (len(train), len(evaluation)) == (counts["train"], counts["eval"])
    assert len(train) + len(evaluation) == counts["chats"] and counts["eval"] == round(0.1 * counts["chats"])
    chats = train + evaluation
    for chat in chats:
        roles = [m["role"] for m in chat["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        assert all(isinstance(m["content"], str) and m["content"] for m in chat["messages"])
    assert any(len(c["messages"]) > 2 for c in chats)  # multi-turn conversations stay multi-turn
    assert {"role": "user", "content": "What is AI?"} in [c["messages"][0] for c in chats]
    keys = [json.dumps(c, sort_keys=True) for c in chats]
    assert len(set(keys)) == len(keys)  # duplicates dropped: no chat is in both splits
    assert counts["skipped"] >= 1  # trivia.yml holds a plain string where a pair belongs


def test_split_is_reproducible_and_seeded(prepare, english, tmp_path):
    out, _ = english
    prepare.main(["--out", str(tmp_path / "same"), "--seed", "0"])
    prepare.main(["--out", str(tmp_path / "other"), "--seed", "1"])
    assert (tmp_path / "same" / "eval.jsonl").read_text() == (out / "eval.jsonl").read_text()
    assert (tmp_path / "other" / "eval.jsonl").read_text() != (out / "eval.jsonl").read_text()
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]  # atomic writes leave no temporary files


def test_prepared_chats_feed_build_dataset(english, smollm2_tok, label_spans):
    out, counts = english
    ds = build_dataset(str(out / "eval.jsonl"), smollm2_tok, seq_length=256)
    assert ds.data_format == "chat" and len(ds) == counts["eval"]
    first = read_jsonl(out / "eval.jsonl")[0]
    answers = [m["content"] + "<|im_end|>" for m in first["messages"] if m["role"] == "assistant"]
    assert [smollm2_tok.decode(s) for s in label_spans(ds[0]["labels"])] == answers
    assert 0 < ds.num_label_tokens < ds.num_tokens
