"""Streamers: the text pieces of real multi-byte texts, fed token by token through SmolLM2's byte-level
BPE tokenizer (which splits emoji and CJK characters across tokens), join to exactly the decoded text and
never show an incomplete character."""
import queue
import threading
import time

import numpy as np
import pytest
from mindspore import Tensor

from mindformers import AutoTokenizer
from mindformers.generation.streamers import IncrementalDecoder, TextIteratorStreamer, TextStreamer

TEXTS = [
    "Hello 😀 world, café au lait is très bon!",
    "我爱北京天安门，因为它很美。 Then English",
    "Family 👩‍👩‍👧 and flags 🇺🇸🇯🇵 naïve Ünïcödé\nsecond line 🎉 ends here",
    "Emoji at the end 🐍🐍",
]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained("smollm2_135m_instruct")


class RecordingStreamer(TextStreamer):
    """Records each released piece instead of printing it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pieces = []
        self.ended = False

    def on_finalized_text(self, text, stream_end=False):
        self.pieces.append(text)
        self.ended = stream_end


def as_type(ids, kind):
    """Ids in the forms generate may pass: numpy [n] / [1, n], list, MindSpore Tensor."""
    array = np.asarray(ids, dtype=np.int64)
    forms = {"np1": array, "np2": array[None], "list": array.tolist()}
    return Tensor(array[None].astype(np.int32)) if kind == "tensor" else forms[kind]


def stream(streamer, ids, prompt_len, kind="np2"):
    """Feed ``ids`` as generate does: the prompt in one put, then one put per token, then end()."""
    streamer.put(as_type(ids[:prompt_len], kind))
    for token in ids[prompt_len:]:
        streamer.put(as_type([token], kind))
    before_end = "".join(getattr(streamer, "pieces", []))
    streamer.end()
    return before_end


@pytest.mark.parametrize("kind", ["np1", "np2", "list", "tensor"])
@pytest.mark.parametrize("text", TEXTS)
def test_pieces_join_to_the_text_without_incomplete_characters(tokenizer, text, kind):
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    # byte-level BPE really splits these characters: some single tokens decode to U+FFFD
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)
    streamer = RecordingStreamer(tokenizer)
    before_end = stream(streamer, ids, prompt_len=2, kind=kind)
    assert "".join(streamer.pieces) == text
    assert not any("\ufffd" in piece for piece in streamer.pieces)
    assert streamer.ended
    if not text.endswith("。"):
        # text is released as it becomes final: everything up to the last space or newline before end()
        assert before_end == text[: max(text.rfind(" "), text.rfind("\n")) + 1]


def test_cjk_characters_are_released_at_once(tokenizer):
    text = "我爱北京天安门"
    ids = tokenizer(text)["input_ids"]
    streamer = RecordingStreamer(tokenizer)
    streamer.put(np.array(ids[:1]))
    released = []
    for token in ids[1:]:
        streamer.put(np.array([token]))
        released.append("".join(streamer.pieces))
    # each completed ideograph is out before end(): the text released so far grows to the whole text
    assert released[-1] == text
    assert all(text.startswith(r) for r in released)


def test_skip_prompt_streams_only_new_text(tokenizer):
    prompt, answer = "Translate to French:", " café 😀 très bien"
    prompt_ids, answer_ids = tokenizer(prompt)["input_ids"], tokenizer(answer)["input_ids"]
    streamer = RecordingStreamer(tokenizer, skip_prompt=True)
    for _ in range(2):  # a streamer serves several generations: each starts with a prompt again
        streamer.pieces = []
        stream(streamer, prompt_ids + answer_ids, prompt_len=len(prompt_ids))
        assert "".join(streamer.pieces) == tokenizer.decode(answer_ids) == answer


def test_decode_kwargs_skip_special_tokens(tokenizer):
    ids = tokenizer("Paris is nice 🗼")["input_ids"] + [tokenizer.eos_token_id]
    streamer = RecordingStreamer(tokenizer, skip_special_tokens=True)
    stream(streamer, ids, prompt_len=1)
    assert "".join(streamer.pieces) == "Paris is nice 🗼"


def test_text_streamer_prints_with_a_final_newline(tokenizer, capsys):
    text = TEXTS[0]
    stream(TextStreamer(tokenizer), tokenizer(text)["input_ids"], prompt_len=3)
    assert capsys.readouterr().out == text + "\n"


def test_batch_of_two_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="TextStreamer only supports batch size 1"):
        TextStreamer(tokenizer).put(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="TextIteratorStreamer only supports batch size 1"):
        TextIteratorStreamer(tokenizer).put(Tensor(np.zeros((2, 1), dtype=np.int32)))
    with pytest.raises(TypeError, match="integer token ids"):
        TextStreamer(tokenizer).put(np.zeros((1, 3), dtype=np.float32))


def test_iterator_streamer_with_generate_in_a_thread(tokenizer):
    text = TEXTS[2]
    ids = tokenizer(text)["input_ids"]
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=10)
    prompt_len = len(tokenizer("Family")["input_ids"])  # the prompt ends on a whole word

    def fake_generate():  # the put/end calls generate makes, with time between tokens
        streamer.put(np.array([ids[:prompt_len]]))
        for token in ids[prompt_len:]:
            time.sleep(0.001)
            streamer.put(np.array([token]))
        streamer.end()

    thread = threading.Thread(target=fake_generate)
    thread.start()
    pieces = list(streamer)
    thread.join()
    assert "".join(pieces) == tokenizer.decode(ids[prompt_len:])
    assert len(pieces) > 5 and all(pieces) and not any("\ufffd" in p for p in pieces)


def test_iterator_streamer_times_out(tokenizer):
    streamer = TextIteratorStreamer(tokenizer, timeout=0.05)
    start = time.monotonic()
    with pytest.raises(queue.Empty):
        next(iter(streamer))
    assert time.monotonic() - start < 2


@pytest.mark.parametrize("whole_words", [True, False])
def test_incremental_decoder_releases_words_or_characters(tokenizer, whole_words):
    text = TEXTS[0]  # "Hello 😀 world, ..."
    ids = tokenizer(text)["input_ids"]
    decoder = IncrementalDecoder(tokenizer, whole_words=whole_words)
    pieces = [decoder.add([token]) for token in ids]
    assert pieces[0] == ("" if whole_words else "Hello")  # a word waits for its space only with whole_words
    assert "".join(pieces) + decoder.flush() == text and not any("\ufffd" in p for p in pieces)
    assert decoder.ids == ids and decoder.flush() == ""
