"""generate(): settings, sampling, stopping, streaming and bad input, on the tiny interop Llama."""
import json
import os
import threading

import numpy as np
import pytest

from mindformers import AutoModel, AutoTokenizer, GenerationConfig, TextIteratorStreamer
from mindformers.generation.logits_process import sample, top_k_filter, top_p_filter
from tests.conftest import INTEROP

IDS = np.load(os.path.join(INTEROP, "llama", "input_ids.npy"))


@pytest.fixture(scope="module")
def llama():
    model = AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base"))
    model.generation_mode = "pynative"  # tiny model: eager steps beat compiling per shape
    return model


def test_generation_config_json_is_the_default(llama, tmp_path):
    assert llama.generation_config.max_new_tokens == 12 and llama.generation_config.pad_token_id == 0
    out = llama.generate(IDS, eos_token_id=[])
    np.testing.assert_array_equal(out, np.load(os.path.join(INTEROP, "llama", "generate_base.npy")))
    llama.save_pretrained(str(tmp_path))
    assert json.loads((tmp_path / "generation_config.json").read_text())["max_new_tokens"] == 12


def test_max_length_and_max_new_tokens(llama):
    assert llama.generate([[1, 5, 9]], max_new_tokens=4, eos_token_id=[]).shape == (1, 7)
    config = GenerationConfig(max_length=10, eos_token_id=[])
    assert llama.generate([[1, 5, 9]], generation_config=config).shape == (1, 10)


def test_several_eos_ids_stop_each_row(llama):
    free = llama.generate(IDS, max_new_tokens=12, eos_token_id=[])
    stops = [int(free[0, 18]), int(free[1, 20])]  # the 3rd new token of row 0, the 5th of row 1
    out = llama.generate(IDS, max_new_tokens=12, eos_token_id=stops, pad_token_id=0)
    assert out[0, 18] == stops[0] and (out[0, 19:] == 0).all()
    assert out[1, 20] in stops and (out[1, 21:] == 0).all()
    np.testing.assert_array_equal(out[0, :19], free[0, :19])


def test_sampling_is_seeded_and_varies(llama):
    a = llama.generate(IDS, max_new_tokens=10, do_sample=True, seed=3, eos_token_id=[])
    b = llama.generate(IDS, max_new_tokens=10, do_sample=True, seed=3, eos_token_id=[])
    c = llama.generate(IDS, max_new_tokens=10, do_sample=True, seed=4, eos_token_id=[])
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    greedy = llama.generate(IDS, max_new_tokens=10, eos_token_id=[])
    assert (llama.generate(IDS, max_new_tokens=10, do_sample=True, top_k=1, seed=5, eos_token_id=[]) == greedy).all()
    many = llama.generate(IDS[:1], max_new_tokens=4, do_sample=True, num_return_sequences=3, seed=1, eos_token_id=[])
    assert many.shape == (3, 20) and len({tuple(r) for r in many[:, 16:]}) > 1


def test_top_k_top_p_and_sampler_numbers():
    scores = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    assert np.isfinite(top_k_filter(scores, 2)).tolist() == [[True, True, False, False]]
    assert np.isfinite(top_p_filter(scores, 0.7)).tolist() == [[True, True, False, False]]  # 0.5+0.3 >= 0.7
    assert np.isfinite(top_p_filter(scores, 0.5)).tolist() == [[True, False, False, False]]
    assert np.isfinite(top_p_filter(scores, 1e-9)).tolist() == [[True, False, False, False]]  # keeps the best
    draws = np.concatenate([sample(np.repeat(scores, 1000, 0), np.random.default_rng(i)) for i in range(20)])
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / len(draws), [0.5, 0.3, 0.15, 0.05], atol=0.01)


def test_stop_strings_stop_on_generated_text(llama):
    class DigitsTokenizer:  # decodes id i to the text "<i>"
        def batch_decode(self, rows):
            return ["".join(f"<{int(i)}>" for i in row) for row in rows]

    free = llama.generate(IDS[:1], max_new_tokens=12, eos_token_id=[])
    stop = f"<{int(free[0, 19])}>"  # the 4th new token's text
    out = llama.generate(IDS[:1], max_new_tokens=12, eos_token_id=[], stop_strings=[stop], tokenizer=DigitsTokenizer())
    assert out.shape == (1, 20) and out[0, -1] == free[0, 19]
    with pytest.raises(ValueError, match="stop_strings need the tokenizer"):
        llama.generate(IDS[:1], stop_strings="x")


def test_iterator_streamer_in_a_thread(llama):
    class IdsTokenizer:
        def decode(self, ids, **kwargs):
            return "".join(f"{int(i)} " for i in ids)

    streamer = TextIteratorStreamer(IdsTokenizer(), skip_prompt=True, timeout=60)
    result = {}
    thread = threading.Thread(target=lambda: result.update(out=llama.generate(
        IDS[:1], max_new_tokens=6, eos_token_id=[], streamer=streamer)))
    thread.start()
    text = "".join(streamer)
    thread.join()
    assert text.split() == [str(i) for i in result["out"][0, 16:]]


def test_bad_input_is_refused_clearly(llama):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        llama.generate([[1, 2], []])
    with pytest.raises(ValueError, match="the prompt has 130 tokens but the model's context is 128 tokens"):
        llama.generate([list(range(3, 133))])
    with pytest.raises(ValueError, match="beyond the model's context of 128"):
        llama.generate([[1, 2, 3]], max_new_tokens=200)
    with pytest.raises(ValueError, match="max_length=20 leaves no room for new tokens after a 25-token prompt"):
        llama.generate([list(range(3, 28))], generation_config=GenerationConfig(max_length=20))
    for bad in (0.0, 1.5, -1):
        with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
            llama.generate([[1, 2]], top_p=bad)
    with pytest.raises(ValueError, match=r"unknown generation argument\(s\) \['max_tokens'\]; valid: max_length"):
        llama.generate([[1, 2]], max_tokens=5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        llama.generate([[1, 2]], do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="a streamer needs a single prompt"):
        llama.generate(IDS, streamer=TextIteratorStreamer(AutoTokenizer.from_pretrained("gpt2")))
    with pytest.raises(TypeError, match="input_ids must be a list of ids"):
        llama.generate("hello")
