"""Text-generation pipeline: inputs, padding, decoding and errors against a recording fake model; then
the real generate() on the tiny Llama fixture (against transformers' greedy ids) and on SmolLM2."""
import os
from types import SimpleNamespace

import numpy as np
import pytest

from mindformers import AutoModel, LlamaConfig, LlamaForSequenceClassification
from mindformers.generation.streamers import TextIteratorStreamer
from mindformers.pipeline import TextGenerationPipeline, pipeline
from tests.conftest import INTEROP
from tests.pipeline.conftest import FakeLM, word_tokenizer, words


@pytest.fixture()
def fake():
    model = FakeLM()
    return model, pipeline("text_generation", model=model, tokenizer=word_tokenizer(384), max_new_tokens=2)


def test_one_prompt(fake):
    model, p = fake
    assert p("t7 t8 t9") == [{"text_generation_text": ["t7 t8 t9 t100 t101"]}]
    call = model.calls[-1]
    assert call["input_ids"].tolist() == [[7, 8, 9]] and call["attention_mask"].tolist() == [[1, 1, 1]]
    assert call["max_new_tokens"] == 2 and call["tokenizer"] is p.tokenizer  # a pipeline default


def test_call_options_override_defaults(fake):
    model, p = fake
    assert p("t7", max_new_tokens=4, do_sample=False) == [{"text_generation_text": ["t7 t100 t101 t102 t103"]}]
    assert model.calls[-1]["max_new_tokens"] == 4 and model.calls[-1]["do_sample"] is False
    p("t7")
    assert model.calls[-1]["max_new_tokens"] == 2 and "do_sample" not in model.calls[-1]


def test_prompts_are_one_left_padded_batch(fake):
    model, p = fake
    assert p.tokenizer.padding_side == "right"  # the pipeline pads left anyway (generate appends on the right)
    out = p(["t7 t8 t9", "t4"])
    assert out == [{"text_generation_text": ["t7 t8 t9 t100 t101"]}, {"text_generation_text": ["t4 t110 t111"]}]
    call = model.calls[-1]
    assert call["input_ids"].tolist() == [[7, 8, 9], [0, 0, 4]]
    assert call["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_num_return_sequences_are_grouped_per_input(fake):
    _, p = fake
    out = p(["t7", "t8 t9"], num_return_sequences=2)
    assert out == [
        {"text_generation_text": ["t7 t100 t101", "t7 t101 t102"]},
        {"text_generation_text": ["t8 t9 t110 t111", "t8 t9 t111 t112"]},
    ]


def test_chat_returns_the_answer_only(fake):
    model, p = fake
    chat = [{"role": "user", "content": "t7 t8"}]
    assert p(chat) == [{"text_generation_text": ["t100 t101"]}]
    assert model.calls[-1]["input_ids"].tolist() == [[7, 8, 5]]  # the template's generation prompt "t5"
    chats = [chat, [{"role": "system", "content": "t3"}, {"role": "user", "content": "t9"}]]
    assert p(chats) == [{"text_generation_text": ["t100 t101"]}, {"text_generation_text": ["t110 t111"]}]
    assert model.calls[-1]["input_ids"].tolist() == [[7, 8, 5], [3, 9, 5]]


def test_special_tokens_are_not_in_the_text():
    model = FakeLM()
    tokenizer = word_tokenizer(384)
    tokenizer.add_special_tokens({"eos_token": "t101"})
    p = TextGenerationPipeline(model, tokenizer, max_new_tokens=3)
    assert p("t7") == [{"text_generation_text": ["t7 t100 t102"]}]


def test_input_errors(fake):
    _, p = fake
    with pytest.raises(ValueError, match="empty list"):
        p([])
    with pytest.raises(TypeError, match="item 1 is a int"):
        p(["t1", 3])
    with pytest.raises(TypeError, match="got a int"):
        p(3)
    with pytest.raises(TypeError, match="not a mix"):
        p(["t1", [{"role": "user", "content": "t2"}]])
    with pytest.raises(ValueError, match="gives no tokens"):
        p(["t1", ""])
    with pytest.raises(ValueError, match="made by the text_generation pipeline"):
        p("t1", input_ids=[[1]])


def test_unknown_generation_option_reaches_the_user_unchanged(fake):
    model, p = fake
    with pytest.raises(ValueError) as raised:
        p("t1", max_new_tokns=3)
    with pytest.raises(ValueError) as direct:
        model.generate([[1]], max_new_tokns=3)
    assert str(raised.value) == str(direct.value)


def test_model_errors():
    tokenizer = word_tokenizer(384)
    with pytest.raises(ValueError, match="model instance but no tokenizer"):
        pipeline("text_generation", model=FakeLM())
    with pytest.raises(TypeError, match="generate"):
        pipeline("text_generation", model=SimpleNamespace(config=None), tokenizer=tokenizer)
    config = LlamaConfig(vocab_size=384, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2)
    classifier = LlamaForSequenceClassification(config)
    with pytest.raises(ValueError, match="needs a causal_lm model"):
        pipeline("text_generation", model=classifier, tokenizer=tokenizer)


# ------------------------------------------------------------------ the real generate()

LLAMA = os.path.join(INTEROP, "llama")


@pytest.fixture(scope="module")
def tiny_llama():
    model = AutoModel.from_pretrained(os.path.join(LLAMA, "base"))
    model.generation_mode = "pynative"  # a few eager steps beat compiling the graphs (~7 s) for a tiny model
    return model


def test_greedy_ids_equal_transformers(tiny_llama):
    """Both prompts in one batch; transformers' greedy continuation of 12 tokens (tests/fixtures/interop)."""
    prompts = np.load(os.path.join(LLAMA, "input_ids.npy"))
    expected = np.load(os.path.join(LLAMA, "generate_base.npy"))
    p = pipeline("text-generation", model=tiny_llama, tokenizer=word_tokenizer(384), do_sample=False)
    out = p([words(row) for row in prompts], max_new_tokens=12)
    assert out == [{"text_generation_text": [words(row)]} for row in expected]


def test_padded_batch_equals_generate_on_unpadded_prompts(tiny_llama):
    prompts = np.load(os.path.join(LLAMA, "input_ids.npy"))
    rows = [prompts[0].tolist(), prompts[1, :7].tolist()]
    direct = tiny_llama.generate(rows, do_sample=False, max_new_tokens=12)  # lists of different lengths
    p = pipeline("text_generation", model=tiny_llama, tokenizer=word_tokenizer(384), do_sample=False,
                 max_new_tokens=12)
    out = p([words(r) for r in rows])
    width = len(rows[0])
    assert out == [{"text_generation_text": [words(r + direct[i, width:].tolist())]} for i, r in enumerate(rows)]


def test_generate_errors_reach_the_user_unchanged(tiny_llama):
    p = pipeline("text_generation", model=tiny_llama, tokenizer=word_tokenizer(384))
    for options in ({"max_new_tokns": 3}, {"num_beams": 1, "num_return_sequences": 2}):
        with pytest.raises(ValueError) as raised:
            p("t1 t2", **options)
        with pytest.raises(ValueError) as direct:
            tiny_llama.generate([[1, 2]], **options)
        assert str(raised.value) == str(direct.value)


@pytest.fixture()
def eager_smollm2(smollm2):
    """SmolLM2 generating eagerly: compiling its prefill and decode graphs takes ~30 s on 2 cores, three
    eager 8-token generations ~20 s (with the blocking launches tests/conftest.py sets)."""
    mode = smollm2.generation_mode
    smollm2.generation_mode = "pynative"
    yield smollm2
    smollm2.generation_mode = mode


def test_smollm2_prompt_chat_and_streamer(eager_smollm2, smollm2_tokenizer):
    """Greedy SmolLM2: the pipeline's text is the prompt plus the decoded new ids of generate(); a chat gives
    the answer, and a streamer passed through the pipeline streams exactly that answer."""
    model, tokenizer = eager_smollm2, smollm2_tokenizer
    p = pipeline("text_generation", model=model, tokenizer=tokenizer, do_sample=False, max_new_tokens=8)
    prompt = "I love Beijing, because"
    ids = tokenizer(prompt)["input_ids"]
    direct = model.generate([ids], do_sample=False, max_new_tokens=8)[0, len(ids):]
    assert len(direct) == 8
    out = p(prompt)
    assert out == [{"text_generation_text": [prompt + tokenizer.decode(direct, skip_special_tokens=True)]}]
    assert len(out[0]["text_generation_text"][0]) > len(prompt) + 10

    chat = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}]
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    answer = p(chat, streamer=streamer)[0]["text_generation_text"][0]  # generate ends before we read the queue
    assert "Paris" in answer and "<|im_" not in answer and "assistant" not in answer
    assert "".join(streamer) == answer
