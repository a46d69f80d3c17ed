"""``apply_chat_template`` against transformers' output for SmolLM2, and the template environment."""

import copy
import re
from datetime import datetime

import numpy as np
import pytest

from mindformers.tokenizers import render_chat_template


def test_smollm2_chat_template_text_and_ids_equal_transformers(smollm2, smollm2_ref):
    assert smollm2.chat_template == smollm2_ref["chat_template"]
    assert len(smollm2_ref["chats"]) == 4
    for chat in smollm2_ref["chats"]:
        gen = chat["add_generation_prompt"]
        text = smollm2.apply_chat_template(chat["messages"], tokenize=False, add_generation_prompt=gen)
        assert text == chat["text"]
        ids = smollm2.apply_chat_template(chat["messages"], add_generation_prompt=gen, return_dict=False)
        assert ids == chat["llama_cpp_ids"] == chat["hf_ids"]  # no digits after spaces here, so all three agree
        assert text.endswith("<|im_start|>assistant\n") is gen


def test_smollm2_default_system_prompt_and_generation_prompt(smollm2):
    text = smollm2.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    out = smollm2.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert out["input_ids"][:2] == [1, 9690] and out["input_ids"][-4:] == [
        1,
        520,
        9531,
        198,
    ]  # <|im_start|>system ... <|im_start|>assistant\n
    assert out["attention_mask"] == [1] * len(out["input_ids"])


def test_batch_of_conversations(smollm2, smollm2_ref):
    conversations = [c["messages"] for c in smollm2_ref["chats"][::2]]
    texts = smollm2.apply_chat_template(conversations, tokenize=False, add_generation_prompt=True)
    assert texts == smollm2_ref["batch_chat_text"]
    out = smollm2.apply_chat_template(conversations, add_generation_prompt=True, padding=True, return_tensors="np")
    lengths = [len(smollm2.encode(t)) for t in texts]
    assert out["input_ids"].shape == (2, max(lengths))
    assert out["attention_mask"].sum(axis=1).tolist() == lengths


def test_chat_ids_as_mindspore_tensor(smollm2):
    import mindspore as ms

    ids = smollm2.apply_chat_template([{"role": "user", "content": "Hi"}], return_tensors="ms", return_dict=False)
    assert ids.dtype == ms.int32 and ids.shape[0] == 1


def test_template_environment_matches_transformers():
    template = (
        "{% for m in messages %}{{ m['content'] | tojson }}{% if not loop.last %}|{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ bos_token }}{% endif %}"
    )
    out = render_chat_template(
        template,
        [[{"role": "user", "content": "<b>&é</b>"}, {"role": "user", "content": 3}]],
        add_generation_prompt=True,
        bos_token="<s>",
    )
    assert out == ['"<b>&é</b>"|3<s>']  # no HTML escaping, no ASCII escaping (unlike Jinja's own tojson)
    assert render_chat_template("{{ x | tojson(indent=2) }}", [[]], x={"a": [1]}) == ['{\n  "a": [\n    1\n  ]\n}']
    # trim_blocks / lstrip_blocks: block tags leave no newline or indentation behind
    assert render_chat_template("  {% if true %}\nyes\n  {% endif %}\n", [[]]) == ["yes\n"]
    assert render_chat_template("{{ strftime_now('%Y') }}", [[]]) == [str(datetime.now().year)]
    assert render_chat_template("{% generation %}kept{% endgeneration %}", [[]]) == ["kept"]
    assert render_chat_template(
        "{% for i in range(5) %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}", [[]]
    ) == ["01"]
    # keys set to None are dropped before the template sees them; numpy scalars become plain numbers
    assert render_chat_template(
        "{{ messages[0].get('name', 'none') }} {{ n + 1 }}", [[{"role": "u", "name": None}]], n=np.int64(1)
    ) == ["none 2"]


def test_template_errors():
    with pytest.raises(Exception, match="only user and assistant"):
        render_chat_template("{{ raise_exception('only user and assistant') }}", [[]])
    with pytest.raises(ValueError, match="not valid Jinja2"):
        render_chat_template("{% for %}", [[]])
    with pytest.raises(Exception, match="unsafe|access"):  # the sandbox blocks attribute escapes
        render_chat_template("{{ ''.__class__.__mro__ }}", [[]])
    with pytest.raises(TypeError, match="each message must be a dict"):
        render_chat_template("{{ messages }}", [["hello"]])


def test_missing_template_and_bad_conversations(gpt2, smollm2):
    with pytest.raises(
        ValueError, match=r"has no chat template .*pass chat_template='...' or set tokenizer.chat_template"
    ):
        gpt2.apply_chat_template([{"role": "user", "content": "hi"}])
    assert gpt2.apply_chat_template(
        [{"role": "user", "content": "hi"}], chat_template="{{ messages[0].content }}", return_dict=False
    ) == [5303]
    with pytest.raises(ValueError, match="non-empty list of messages"):
        smollm2.apply_chat_template([])
    with pytest.raises(ValueError, match="conversation 1 is empty"):
        smollm2.apply_chat_template([[{"role": "user", "content": "a"}], []])


def test_named_templates(smollm2):
    tok = copy.copy(smollm2)
    tok.chat_template = {"default": "D:{{ messages[0].content }}", "tool_use": "T:{{ messages[0].content }}"}
    conv = [{"role": "user", "content": "x"}]
    assert tok.apply_chat_template(conv, tokenize=False) == "D:x"
    assert tok.apply_chat_template(conv, tokenize=False, chat_template="tool_use") == "T:x"
    tok.chat_template = {"tool_use": "T"}
    with pytest.raises(ValueError, match=re.escape("several chat templates ['tool_use'] and none is 'default'")):
        tok.apply_chat_template(conv, tokenize=False)
