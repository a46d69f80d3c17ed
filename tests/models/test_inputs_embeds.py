"""``inputs_embeds`` (transformers' argument): the token embeddings given instead of looked up, for a family
with rotary positions (Llama) and one whose learned positions are added to them (GPT-2)."""
import numpy as np
import pytest
from mindspore import Tensor, ops

from mindformers.models.gpt2 import GPT2Config, GPT2LMHeadModel
from mindformers.models.llama import LlamaConfig, LlamaForCausalLM


def _llama():
    return LlamaForCausalLM.from_config(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                                    num_hidden_layers=1, num_attention_heads=2,
                                                    num_key_value_heads=1), seed=3)


def _gpt2():
    return GPT2LMHeadModel.from_config(GPT2Config(num_layers=1, hidden_size=16, num_heads=2, vocab_size=64,
                                                  seq_length=16), seed=3)


@pytest.mark.parametrize("make", [_llama, _gpt2], ids=["llama", "gpt2"])
def test_inputs_embeds_give_the_logits_and_loss_of_the_ids(make):
    model = make()
    model.set_train(False)
    ids = Tensor(np.random.default_rng(0).integers(0, 64, (2, 7)).astype(np.int32))
    mask = Tensor(np.ones((2, 7), np.int32))
    embeds = ops.gather(model.stack().embedding_weight(), ids, 0)
    np.testing.assert_allclose(model(ids, mask, None, None, embeds).asnumpy(), model(ids, mask).asnumpy(),
                               rtol=1e-6, atol=1e-6)
    loss, _ = model(ids, mask, None, ids, embeds * 2.0)  # other embeddings: another loss
    assert abs(float(loss.asnumpy()) - float(model(ids, mask, None, ids)[0].asnumpy())) > 1e-4


def test_inputs_embeds_with_a_prompt_tuners_virtual_tokens_are_refused():
    """The virtual tokens are looked up in the tuner's own table before the ids: given embeddings cannot hold
    them, so the call says so instead of running on misaligned positions."""
    from mindformers.tuners import PromptTuningConfig
    from mindformers.tuners.peft import get_peft_model

    model = get_peft_model(_llama(), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    assert model.get_base_model().tied_embedding_table() is None  # the trainer differentiates its lookup
    ids = Tensor(np.zeros((1, 4), np.int32))
    embeds = ops.zeros((1, 4, 16), ids.dtype).astype("float32")
    with pytest.raises(ValueError, match="inputs_embeds cannot be given to a model with a prompt tuner's virtual"):
        model(ids, None, None, None, embeds)
