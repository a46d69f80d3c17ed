"""Loss masks of supervised records (chat, ShareGPT, Alpaca) with real tokenizers: exact label tokens."""

import copy

import numpy as np
import pytest

from mindformers.dataset import ALPACA_PROMPT_INPUT, ALPACA_PROMPT_NO_INPUT, build_dataset

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "How are you?"},
    {"role": "assistant", "content": "I am fine, thanks."},
]


def decoded_spans(tok, labels, label_spans):
    return [tok.decode(span) for span in label_spans(labels)]


def test_chat_labels_are_exactly_the_assistant_answers_and_their_end_of_turn(smollm2_tok, label_spans):
    ds = build_dataset([{"messages": CHAT}], smollm2_tok)
    example = ds[0]
    ids, labels = example["input_ids"], example["labels"]
    assert ids.dtype == np.int32 and labels.dtype == np.int32
    assert ids.tolist() == smollm2_tok.apply_chat_template(CHAT, return_dict=False)
    assert decoded_spans(smollm2_tok, labels, label_spans) == ["Hello!<|im_end|>", "I am fine, thanks.<|im_end|>"]
    # labelled positions carry their own token; everything else (system, user, headers, newlines) is -100
    mask = labels != -100
    assert (labels[mask] == ids[mask]).all()
    answers = [smollm2_tok.encode(m["content"], add_special_tokens=False) for m in CHAT if m["role"] == "assistant"]
    assert ds.num_label_tokens == int(mask.sum()) == sum(len(a) + 1 for a in answers)
    assert ds.num_tokens == len(ids)
    # the token after each answer is <|im_end|> (id 2), and the "\n" after it carries no loss
    ends = np.flatnonzero(mask[:-1] & ~mask[1:])
    assert ids[ends].tolist() == [2, 2] and smollm2_tok.decode(ids[ends + 1]) == "\n\n"


def test_sharegpt_gives_the_same_example_as_messages(smollm2_tok):
    roles = {"system": "system", "user": "human", "assistant": "gpt"}
    sharegpt = {"conversations": [{"from": roles[m["role"]], "value": m["content"]} for m in CHAT]}
    ours, theirs = build_dataset([{"messages": CHAT}], smollm2_tok), build_dataset([sharegpt], smollm2_tok)
    assert theirs.data_format == "sharegpt"
    assert theirs[0]["input_ids"].tolist() == ours[0]["input_ids"].tolist()
    assert theirs[0]["labels"].tolist() == ours[0]["labels"].tolist()


def test_conversation_opening_with_the_assistant_is_labelled(smollm2_tok, label_spans):
    chat = [{"role": "assistant", "content": "Welcome."}, {"role": "user", "content": "Thanks"}]
    ds = build_dataset([{"messages": chat}], smollm2_tok)
    assert decoded_spans(smollm2_tok, ds[0]["labels"], label_spans) == ["Welcome.<|im_end|>"]


def test_alpaca_with_a_chat_template_labels_only_the_output(smollm2_tok, label_spans):
    record = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "The sum is 5."}
    ds = build_dataset([record, {**record, "input": ""}], smollm2_tok)
    assert ds.data_format == "alpaca"
    answer = {"role": "assistant", "content": "The sum is 5."}
    with_input = [{"role": "user", "content": "Add the numbers.\n\n2 and 3"}, answer]
    without_input = [{"role": "user", "content": "Add the numbers."}, answer]
    assert ds[0]["input_ids"].tolist() == smollm2_tok.apply_chat_template(with_input, return_dict=False)
    assert ds[1]["input_ids"].tolist() == smollm2_tok.apply_chat_template(without_input, return_dict=False)
    for i in range(2):
        assert decoded_spans(smollm2_tok, ds[i]["labels"], label_spans) == ["The sum is 5.<|im_end|>"]


def test_alpaca_without_a_template_uses_the_alpaca_prompt_then_output_and_eos(gpt2_tok, label_spans):
    records = [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": " The sum is 5."},
        {"instruction": "Say hi.", "output": "Hi!"},  # no "input" key at all
    ]
    ds = build_dataset(records, gpt2_tok)
    prompts = [
        ALPACA_PROMPT_INPUT.format(instruction="Add the numbers.", input="2 and 3"),
        ALPACA_PROMPT_NO_INPUT.format(instruction="Say hi."),
    ]
    assert prompts[1].startswith("Below is an instruction that describes a task. Write a response")
    assert prompts[1].endswith("### Instruction:\nSay hi.\n\n### Response:\n")
    for i, (record, prompt) in enumerate(zip(records, prompts)):
        prompt_ids = gpt2_tok.encode(prompt, add_special_tokens=False)
        output_ids = gpt2_tok.encode(record["output"], add_special_tokens=False)
        assert ds[i]["input_ids"].tolist() == prompt_ids + output_ids + [50256]
        assert ds[i]["labels"].tolist() == [-100] * len(prompt_ids) + output_ids + [50256]
        assert decoded_spans(gpt2_tok, ds[i]["labels"], label_spans) == [record["output"] + "<|endoftext|>"]


def test_alpaca_output_is_tokenized_in_context_with_sentencepiece(mistral_tok):
    # Alone, "Yes" would get sentencepiece's word prefix ("▁Yes"); after the prompt's newline it is "Yes",
    # as the model sees it when generating after the prompt.
    records = [{"instruction": "Agree.", "output": "Yes"}, {"instruction": "Stay silent.", "output": ""}]
    ds = build_dataset(records, mistral_tok)
    labelled = [ds[i]["labels"][ds[i]["labels"] != -100].tolist() for i in range(2)]
    assert [mistral_tok.convert_ids_to_tokens(ids) for ids in labelled] == [["Yes", "</s>"], ["</s>"]]
    assert mistral_tok.convert_ids_to_tokens(ds[0]["input_ids"][-4:].tolist()) == [":", "<0x0A>", "Yes", "</s>"]


def test_chat_records_need_a_chat_template(gpt2_tok):
    with pytest.raises(ValueError, match=r"given list: chat records need a tokenizer with a chat template"):
        build_dataset([{"messages": CHAT}], gpt2_tok)


def test_span_falls_back_to_character_offsets_when_bpe_merges_across_the_prompt(smollm2_tok, label_spans):
    # The generation prompt ends with "A: " and the answer's first token is " Hello" (the space merged in),
    # so the prompt's tokens are not a prefix of the conversation's: the span comes from character offsets.
    tok = copy.copy(smollm2_tok)
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\nA: {{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\nA: {% endif %}"
    )
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    ds = build_dataset([{"messages": chat}], tok)
    assert decoded_spans(tok, ds[0]["labels"], label_spans) == [" Hello<|im_end|>"]


def test_span_falls_back_to_the_content_when_history_renders_differently(smollm2_tok, label_spans):
    # A template that closes a finished conversation with <|endoftext|>: the rendering through a middle
    # answer is not a prefix of the whole, so the answer is found by its content; the final
    # <|endoftext|> is not part of the last answer's label either.
    tok = copy.copy(smollm2_tok)
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% else %}<|endoftext|>{% endif %}"
    )
    ds = build_dataset([{"messages": CHAT}], tok)
    assert decoded_spans(tok, ds[0]["labels"], label_spans) == ["Hello!<|im_end|>", "I am fine, thanks.<|im_end|>"]
