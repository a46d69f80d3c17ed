"""generate(): settings, sampling, stopping, streaming and bad input, on the tiny interop Llama."""
import json
import os
import threading

import numpy as np
import pytest

from mindformers import AutoModel, AutoTokenizer, GenerationConfig, TextIteratorStreamer
from mindformers.generation.decoding import DecodingState
from mindformers.generation.logits_process import sample, top_k_filter, top_p_filter
from mindformers.generation.utils import length_limit
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
    with pytest.raises(ValueError, match="stop_strings must be a non-empty string or a list of them, found \\[''\\]"):
        llama.generate([[1, 2]], stop_strings=[""], tokenizer=DigitsTokenizer())
    with pytest.raises(ValueError, match="temperature must be > 0"):
        llama.generate([[1, 2]], do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="a streamer needs a single prompt"):
        llama.generate(IDS, streamer=TextIteratorStreamer(AutoTokenizer.from_pretrained("gpt2")))
    with pytest.raises(TypeError, match="input_ids must be a list of ids"):
        llama.generate("hello")


# Ids generate() gave before token choice moved into DecodingState (recorded with the code of e765422):
# sampling with warpers and a penalty, a row that ends early at eos (the other row's draws must not change),
# a stop string, and several sequences per prompt.
SAMPLING = dict(max_new_tokens=10, do_sample=True, seed=11, top_k=20, top_p=0.9, temperature=0.7,
                repetition_penalty=1.3, pad_token_id=0)
RECORDED = {
    "free": [[78, 77, 71, 26, 315, 226, 211, 58, 216, 289], [60, 9, 195, 68, 361, 165, 232, 96, 129, 41]],
    "eos": [[78, 77, 71, 26, 0, 0, 0, 0, 0, 0], [60, 9, 195, 68, 361, 165, 232, 96, 129, 41]],
    "stop": [[78, 77, 71, 26, 315, 226, 211, 58, 216, 289], [60, 9, 195, 68, 361, 0, 0, 0, 0, 0]],
    "sequences": [[94, 64, 30, 219, 145, 193], [94, 195, 20, 186, 230, 360], [296, 212, 132, 34, 151, 213]],
}


class DigitsTokenizer:  # decodes id i to the text "<i>"
    def batch_decode(self, rows):
        return ["".join(f"<{int(i)}>" for i in row) for row in rows]


def test_sampled_ids_are_the_recorded_ones(llama):
    runs = {
        "free": llama.generate(IDS, eos_token_id=[], **SAMPLING),
        "eos": llama.generate(IDS, eos_token_id=[26], min_new_tokens=2, **SAMPLING),
        "stop": llama.generate(IDS, eos_token_id=[], stop_strings=["<361>"], tokenizer=DigitsTokenizer(), **SAMPLING),
        "sequences": llama.generate(IDS[:1], max_new_tokens=6, do_sample=True, seed=2, num_return_sequences=3,
                                    repetition_penalty=0.8, eos_token_id=[]),
    }
    for name, out in runs.items():
        assert out[:, 16:].tolist() == RECORDED[name], name
        np.testing.assert_array_equal(out[:, :16], np.repeat(IDS[:1], 3, 0) if name == "sequences" else IDS)


def test_decoding_state_reports_why_rows_finish():
    config = GenerationConfig(eos_token_id=4, pad_token_id=0, stop_strings="<3>")
    state = DecodingState(config, 5, prompts=[[1], [1, 2], [2]], prompt_len=2, limit=4, tokenizer=DigitsTokenizer())
    logits = np.full((3, 5), -1.0, np.float32)
    logits[0, 4] = logits[1, 3] = logits[2, 1] = 1.0  # row 0 picks eos, row 1 the stop string, row 2 goes on
    tokens, reasons = state.step(logits)
    assert tokens.tolist() == [4, 3, 1] and reasons == ["stop", "stop", None]
    tokens, reasons = state.step(logits)
    assert tokens.tolist() == [0, 0, 1] and reasons == [None, None, "length"]  # 2 + 2 new tokens = limit
    assert not state.unfinished.any() and state.tokens.tolist() == [[4, 0], [3, 0], [1, 1]]
    with pytest.raises(ValueError, match="stop_strings need the tokenizer"):
        DecodingState(config, 5, prompts=[[1]], prompt_len=1, limit=3)


def test_length_limit_counts_prompt_adapter_positions_and_a_cap():
    config = GenerationConfig(max_new_tokens=10)
    assert length_limit(config, 100, context=128) == 110
    assert length_limit(config, 100, context=128, prompted=18) == 110  # 110 positions left: just fits
    with pytest.raises(ValueError, match=r"beyond the model's context of 109 \(max_position_embeddings less the "
                                         r"19 positions of the prompt adapter\)"):
        length_limit(config, 100, context=128, prompted=19)
    with pytest.raises(ValueError, match="the prompt has 100 tokens but the model's context is 100 tokens"):
        length_limit(config, 100, context=128, prompted=28)
    with pytest.raises(ValueError, match="the active prompt adapter takes 128 positions"):
        length_limit(config, 1, context=128, prompted=128)
    # a cap below the context binds (the serving engine's max_length); one above it does not
    with pytest.raises(ValueError, match=r"beyond the serving limit of 105 \(max_length"):
        length_limit(config, 100, context=128, cap=105)
    with pytest.raises(ValueError, match="the prompt has 100 tokens but the serving limit is 100 tokens"):
        length_limit(config, 100, context=128, cap=100)
    with pytest.raises(ValueError, match="beyond the model's context of 100"):
        length_limit(config, 95, context=128, prompted=28, cap=120)
    assert length_limit(GenerationConfig(max_length=50), 20, context=128, prompted=60, cap=60) == 50
