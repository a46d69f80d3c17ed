"""The user-facing snippet of the foundation issue, run as written, asserting on the numbers."""
import os

import mindspore as ms
import numpy as np

from mindformers import (
    AutoConfig,
    AutoModel,
    AutoProcessor,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Tokenizer,
    LlamaForCausalLM,
)
from mindformers.utils import ASSETS_DIR
from tests.conftest import INTEROP


def test_foundation_snippet(tmp_path, smollm2):
    cfg = AutoConfig.from_pretrained("gpt2")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (768, 12, 50257)
    assert isinstance(AutoModel.from_config(cfg.replace(num_layers=1)), GPT2LMHeadModel)
    assert isinstance(smollm2, LlamaForCausalLM) and smollm2.num_parameters() == 134_515_008
    assert isinstance(AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base")), LlamaForCausalLM)

    AutoTokenizer.from_pretrained("smollm2_135m_instruct").save_pretrained(str(tmp_path))
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert tok("hello!") == {"input_ids": [28120, 17], "attention_mask": [1, 1]}

    proc = AutoProcessor.from_pretrained("smollm2_135m_instruct", max_length=16)
    text = proc("hello!")["text"]
    assert text.shape == (1, 16) and text.dtype == ms.int32
    assert text.asnumpy()[0, -2:].tolist() == [28120, 17]  # Llama pads on the left, with <|im_end|> (2)
    assert (text.asnumpy()[0, :-2] == 2).all()

    gpt2_tok = AutoTokenizer.from_pretrained("gpt2")  # MindFormers' GPT-2 tokenizer: BOS and EOS around the text
    assert isinstance(gpt2_tok, GPT2Tokenizer) and gpt2_tok("hello!")["input_ids"] == [50256, 31373, 0, 50256]
    assert AutoTokenizer.from_pretrained(os.path.join(ASSETS_DIR, "gpt2"))("hello!")["input_ids"] == [31373, 0]
    assert GPT2LMHeadModel(GPT2Config(hidden_size=768, num_layers=12)).num_parameters() == 124_439_808


def test_smollm2_scores_real_text_sensibly(smollm2):
    """On real English the model is far better than chance (vocab 49152 -> chance loss 10.8)."""
    tok = AutoTokenizer.from_pretrained("smollm2_135m_instruct")
    batch = tok("The quick brown fox jumps over the lazy dog. Paris is the capital of France.", return_tensors="ms")
    loss, logits = smollm2(batch["input_ids"], batch["attention_mask"], labels=batch["input_ids"])
    assert 1.0 < float(loss.asnumpy()) < 4.0
    prompt = tok("The capital of France is", return_tensors="ms")["input_ids"]
    next_id = int(np.argmax(smollm2(prompt).asnumpy()[0, -1]))
    assert tok.decode([next_id]) == " Paris"
