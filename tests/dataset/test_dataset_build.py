"""build_dataset: reading files, format detection, malformed records, packing, classification, truncation."""

import json
import logging

import numpy as np
import pytest

from mindformers.dataset import build_dataset, read_records

ALPACA = {"instruction": "Say hi.", "input": "", "output": "Hi!"}
CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}


def jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


# ------------------------------------------------------------------------------------------ reading


def test_json_jsonl_and_list_sources_give_the_same_dataset(tmp_path, gpt2_tok):
    records = [ALPACA, {"instruction": "Count.", "input": "1 2", "output": "3"}]
    as_jsonl = jsonl(tmp_path / "a.jsonl", [json.dumps(r) for r in records])
    as_json = tmp_path / "a.json"
    as_json.write_text(json.dumps(records, indent=2), encoding="utf-8")
    datasets = [build_dataset(s, gpt2_tok) for s in (records, as_jsonl, str(as_json), as_json)]
    rows = lambda ds, key: [ds[i][key].tolist() for i in range(len(ds))]  # noqa: E731
    for ds in datasets[1:]:
        assert rows(ds, "input_ids") == rows(datasets[0], "input_ids")
        assert rows(ds, "labels") == rows(datasets[0], "labels")


def test_records_know_their_line(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", [json.dumps(ALPACA), "", json.dumps(ALPACA)])
    assert [r.where for r in read_records(path)] == [f"{path}:1", f"{path}:3"]
    array = tmp_path / "d.json"
    array.write_text(json.dumps([ALPACA, ALPACA], indent=1), encoding="utf-8")
    assert [r.where for r in read_records(str(array))] == [f"{array}:2", f"{array}:7"]
    assert [r.where for r in read_records([ALPACA])] == ["record 1 of the given list"]


def test_bad_json_names_file_and_line(tmp_path, gpt2_tok):
    path = jsonl(tmp_path / "bad.jsonl", [json.dumps(ALPACA), json.dumps(ALPACA), '{"instruction": "x", "output": '])
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: invalid JSON") as err:
        build_dataset(path, gpt2_tok)
    assert ":3" in str(err.value) and "expected one JSON object per line" in str(err.value)
    array = tmp_path / "bad.json"
    array.write_text('[\n {"text": "a"},\n {"text": "b"}\n {"text": "c"}\n]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.json:4: invalid JSON: expected ',' or ']'"):
        build_dataset(str(array), gpt2_tok)


@pytest.mark.parametrize(
    "line, expected",
    [
        (json.dumps({"instruction": "x"}), r"an Alpaca record needs 'instruction' and 'output'.*missing \['output'\]"),
        (json.dumps({"instruction": "x", "output": 5}), r"'output' must be a string, found int 5"),
        (json.dumps({"instruction": "x", "input": ["a"], "output": "y"}), r"'input' must be a string, found list"),
        ("[1, 2]", r"expected an Alpaca record .*found list \[1, 2\]"),
    ],
)
def test_malformed_alpaca_record_names_its_line_and_the_problem(tmp_path, gpt2_tok, line, expected):
    path = jsonl(tmp_path / "d.jsonl", [json.dumps(ALPACA), line])
    with pytest.raises(ValueError, match=rf"d\.jsonl:2: {expected}"):
        build_dataset(path, gpt2_tok)


@pytest.mark.parametrize(
    "messages, expected",
    [
        ([], r"'messages' must be a non-empty list"),
        ("hi", r"'messages' must be a non-empty list"),
        ([{"role": "user"}], r"messages\[0\] must be an object with 'role' and 'content'"),
        ([{"role": "robot", "content": "x"}], r"messages\[0\]\['role'\] is 'robot'"),
        ([{"role": "user", "content": 3}], r"messages\[0\]\['content'\] must be a string, found int 3"),
        ([{"role": "user", "content": "only a question"}], r"the conversation has no assistant message"),
    ],
)
def test_malformed_chat_record(tmp_path, smollm2_tok, messages, expected):
    path = jsonl(tmp_path / "c.jsonl", [json.dumps(CHAT), json.dumps(CHAT), json.dumps({"messages": messages})])
    with pytest.raises(ValueError, match=rf"c\.jsonl:3: {expected}"):
        build_dataset(path, smollm2_tok)


def test_unknown_sharegpt_speaker(smollm2_tok):
    with pytest.raises(ValueError, match=r"record 1 of the given list: conversations\[1\]\['from'\] is 'bot'"):
        turns = [{"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]
        build_dataset([{"conversations": turns}], smollm2_tok)


def test_empty_and_unsupported_sources(tmp_path, gpt2_tok):
    for name, text in (("e.jsonl", ""), ("w.jsonl", "\n  \n"), ("e.json", "[]"), ("e.txt", "\n\n")):
        (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match="empty|no records"):
            build_dataset(str(tmp_path / name), gpt2_tok)
    with pytest.raises(ValueError, match="list of records is empty"):
        build_dataset([], gpt2_tok)
    (tmp_path / "d.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"unsupported file type '\.csv'; expected one of"):
        build_dataset(str(tmp_path / "d.csv"), gpt2_tok)
    with pytest.raises(FileNotFoundError, match="no dataset file"):
        build_dataset(str(tmp_path / "missing.jsonl"), gpt2_tok)
    with pytest.raises(ValueError, match=r"\.json:1: invalid JSON: expected '\[' .*use \.jsonl"):
        (tmp_path / "obj.json").write_text(json.dumps(ALPACA), encoding="utf-8")
        build_dataset(str(tmp_path / "obj.json"), gpt2_tok)


# ------------------------------------------------------------------------------------------ format detection


def test_format_detection_is_logged(gpt2_tok, smollm2_tok, caplog):
    with caplog.at_level(logging.INFO, logger="mindformers"):
        assert build_dataset([ALPACA], gpt2_tok).data_format == "alpaca"
        assert build_dataset([CHAT], smollm2_tok).data_format == "chat"
        assert build_dataset([{"text": "hello"}], gpt2_tok).data_format == "text"
    detected = [r.getMessage() for r in caplog.records if "detected data format" in r.getMessage()]
    assert len(detected) == 3 and "'alpaca'" in detected[0] and "['input', 'instruction', 'output']" in detected[0]


def test_unknown_keys_and_mismatched_formats(gpt2_tok):
    with pytest.raises(ValueError, match=r"cannot tell the data format from the record's keys \['prompt'\]"):
        build_dataset([{"prompt": "x"}], gpt2_tok)
    with pytest.raises(ValueError, match="unknown data_format 'csv'"):
        build_dataset([ALPACA], gpt2_tok, data_format="csv")
    with pytest.raises(ValueError, match="does not fit task"):
        build_dataset([{"text": "a", "label": 0}], gpt2_tok, data_format="classification")
    with pytest.raises(ValueError, match="unknown task"):
        build_dataset([ALPACA], gpt2_tok, task="translation")
    with pytest.raises(ValueError, match="seq_length must be an int >= 2"):
        build_dataset([ALPACA], gpt2_tok, seq_length=0)
    # a later record in another format fails with its own line
    with pytest.raises(ValueError, match=r"record 2 of the given list: an Alpaca record needs"):
        build_dataset([ALPACA, {"text": "x"}], gpt2_tok)


# ------------------------------------------------------------------------------------------ plain text


def test_plain_text_packing_joins_documents_with_eos_and_keeps_the_last_chunk(gpt2_tok):
    texts = ["The cat sat on the mat.", "Dogs bark at night and sleep by day.", "Birds sing."]
    docs = [gpt2_tok.encode(t, add_special_tokens=False) + [50256] for t in texts]
    stream = [t for d in docs for t in d]
    ds = build_dataset([{"text": t} for t in texts], gpt2_tok, seq_length=10)
    assert ds.data_format == "text" and [len(d) for d in docs] == [8, 11, 5]
    rows = [ds[i]["input_ids"].tolist() for i in range(len(ds))]
    assert [len(r) for r in rows] == [10, 10, 4]  # the last, partial chunk is kept (padded when batched)
    assert sum(rows, []) == stream
    assert all(ds[i]["labels"].tolist() == rows[i] for i in range(len(ds)))
    # EOS sits exactly at each document's end
    eos_positions = np.flatnonzero(np.array(sum(rows, [])) == 50256).tolist()
    assert eos_positions == [7, 18, 23]  # the last token of each document (lengths 8, 11, 5)
    assert ds.num_tokens == ds.num_label_tokens == 24
    batch = next(ds.batches(3, shuffle=False))
    assert batch["input_ids"][2].tolist() == rows[2] + [50256] * 6
    assert batch["attention_mask"][2].tolist() == [1] * 4 + [0] * 6
    assert batch["labels"][2].tolist() == rows[2] + [-100] * 6


def test_plain_text_packing_drops_a_single_leftover_token(gpt2_tok):
    text = "The cat sat on the mat."  # 7 tokens + EOS = 8; with seq_length 7 one token is left over
    assert len(gpt2_tok.encode(text, add_special_tokens=False)) == 7
    ds = build_dataset([{"text": text}], gpt2_tok, seq_length=7)
    assert len(ds) == 1 and len(ds[0]["input_ids"]) == 7


def test_txt_file_documents_are_blank_line_separated_blocks(tmp_path, gpt2_tok):
    path = tmp_path / "corpus.txt"
    path.write_text("First line\nsecond line\n\n\nAnother document.\n", encoding="utf-8")
    records = read_records(str(path))
    assert [r.data for r in records] == [{"text": "First line\nsecond line"}, {"text": "Another document."}]
    assert [r.where for r in records] == [f"{path}:1", f"{path}:5"]
    ds = build_dataset(str(path), gpt2_tok, packing=False)
    assert len(ds) == 2
    assert ds[0]["input_ids"].tolist() == gpt2_tok.encode("First line\nsecond line", add_special_tokens=False) + [50256]
    packed = build_dataset(str(path), gpt2_tok, seq_length=64)
    assert len(packed) == 1
    assert packed[0]["input_ids"].tolist() == ds[0]["input_ids"].tolist() + ds[1]["input_ids"].tolist()


# ------------------------------------------------------------------------------------------ classification


def test_classification_with_ints_names_and_id_maps(tmp_path, gpt2_tok):
    records = [{"text": "great movie", "label": "pos"}, {"text": "awful", "label": "neg"}, {"text": "fine", "label": 1}]
    for names in (["neg", "pos"], {0: "neg", 1: "pos"}, {"0": "neg", "1": "pos"}):
        ds = build_dataset(records, gpt2_tok, task="text_classification", label_names=names)
        assert ds.data_format == "classification" and ds.label_names == ["neg", "pos"] and ds.num_labels == 2
        assert [int(ds[i]["label"]) for i in range(3)] == [1, 0, 1]
    assert ds[0]["label"].shape == () and ds[0]["label"].dtype == np.int32
    assert ds[0]["input_ids"].tolist() == gpt2_tok.encode("great movie")
    batch = next(ds.batches(3, shuffle=False))
    assert batch["labels"].tolist() == [1, 0, 1] and batch["labels"].dtype == np.int32
    assert batch["input_ids"].shape == (3, 2) and batch["input_ids"][2, 1] == 50256  # "fine": padded with EOS
    assert batch["attention_mask"].tolist() == [[1, 1], [1, 1], [1, 0]]


def test_classification_label_errors_name_the_line(tmp_path, gpt2_tok):
    path = jsonl(tmp_path / "cls.jsonl", [json.dumps({"text": "a", "label": name}) for name in ("pos", "meh")])
    with pytest.raises(ValueError, match=r"cls\.jsonl:2: unknown label 'meh'; known labels: \['neg', 'pos'\]"):
        build_dataset(path, gpt2_tok, task="text_classification", label_names=["neg", "pos"])
    with pytest.raises(ValueError, match=r"cls\.jsonl:1: label 'pos' is a class name but no label_names were given"):
        build_dataset(path, gpt2_tok, task="text_classification")
    with pytest.raises(ValueError, match=r"list: label 2 is out of range; expected an int in \[0, 2\)"):
        build_dataset([{"text": "a", "label": 2}], gpt2_tok, task="text_classification", label_names=["neg", "pos"])
    with pytest.raises(ValueError, match=r"'label' must be an int or a class name, found bool"):
        build_dataset([{"text": "a", "label": True}], gpt2_tok, task="text_classification")
    with pytest.raises(ValueError, match=r"task='text_classification' needs records with keys 'text' and 'label'"):
        build_dataset([{"text": "a"}], gpt2_tok, task="text_classification")
    with pytest.raises(ValueError, match="label_names is only used with task='text_classification'"):
        build_dataset([{"text": "a"}], gpt2_tok, label_names=["a"])


# ------------------------------------------------------------------------------------------ truncation and packing


def test_long_records_are_truncated_counted_and_logged_once(gpt2_tok, caplog):
    long_output = " ".join(["word"] * 40)
    records = [{"instruction": "Talk.", "output": long_output}, ALPACA, {"instruction": "Talk.", "output": long_output}]
    prompt_len = len(gpt2_tok.encode(
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nTalk.\n\n### Response:\n", add_special_tokens=False))
    with caplog.at_level(logging.WARNING, logger="mindformers"):
        ds = build_dataset(records, gpt2_tok, seq_length=prompt_len + 10)
    assert ds.num_truncated == 2 and len(ds) == 3
    assert [len(ds[i]["input_ids"]) for i in (0, 2)] == [prompt_len + 10] * 2
    assert int((ds[0]["labels"] != -100).sum()) == 10  # the answer's first 10 tokens, no EOS
    warnings = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and "2 of 3 records were longer than seq_length" in warnings[0]


def test_examples_whose_answer_is_cut_off_are_dropped(gpt2_tok, caplog):
    records = [{"instruction": "word " * 50, "output": "Yes"}, {"instruction": "Hi", "output": "Yes"}]
    with caplog.at_level(logging.WARNING, logger="mindformers"):
        ds = build_dataset(records, gpt2_tok, seq_length=40)
    assert len(ds) == 1 and "1 of them had no answer token left and were dropped" in caplog.text
    with pytest.raises(ValueError, match="no example has any answer token within seq_length=20"):
        build_dataset(records[:1], gpt2_tok, seq_length=20)


def test_supervised_packing_concatenates_whole_examples(smollm2_tok):
    records = [CHAT] * 5
    single = build_dataset(records, smollm2_tok)
    length = len(single[0]["input_ids"])
    packed = build_dataset(records, smollm2_tok, seq_length=2 * length + 1, packing=True)
    assert [len(packed[i]["input_ids"]) for i in range(len(packed))] == [2 * length, 2 * length, length]
    assert packed[0]["labels"].tolist() == single[0]["labels"].tolist() * 2
    assert packed.num_label_tokens == single.num_label_tokens
    with pytest.raises(ValueError, match="packing=True does not apply to classification"):
        build_dataset([{"text": "a", "label": 0}], smollm2_tok, task="text_classification", packing=True)
