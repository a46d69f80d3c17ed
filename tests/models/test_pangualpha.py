"""PanguAlpha (MindFormers' architecture; no transformers reference exists): cached generation equals
uncached, a save/load round trip keeps the model, MindFormers' config names work, and training lowers the loss."""
import json

import numpy as np
import pytest

from mindformers import AutoModel, PanguAlphaConfig, PanguAlphaHeadModel, Trainer, TrainingArguments
from tests.conftest import ids_tensor

SMALL = dict(vocab_size=64, hidden_size=32, ffn_hidden_size=48, num_layers=3, num_heads=4, seq_length=40,
             initializer_range=0.2, embedding_dropout_prob=0.0, hidden_dropout_rate=0.0, attention_dropout_rate=0.0)


@pytest.fixture(scope="module")
def model():
    return PanguAlphaHeadModel.from_config(PanguAlphaConfig(**SMALL), seed=0)


def test_mindformers_config_names():
    config = PanguAlphaConfig(**SMALL, checkpoint_name_or_path="/some/dir", batch_size=8, use_past=True,
                              top_k=3, do_sample=True, max_decode_length=30)
    assert (config.intermediate_size, config.num_hidden_layers, config.num_attention_heads,
            config.max_position_embeddings) == (48, 3, 4, 40)
    assert config.checkpoint_name_or_path == "/some/dir"
    model = PanguAlphaHeadModel(config)  # MindFormers style: the constructor gives random weights
    assert np.abs(model.backbone.top_query_embedding.weight.asnumpy()).max() > 0
    settings = model._generation_settings(None, {})
    assert (settings.top_k, settings.do_sample, settings.max_length) == (3, True, 30)
    with pytest.raises(ValueError, match="num_layers must be >= 2"):
        PanguAlphaConfig(**{**SMALL, "num_layers": 1})
    with pytest.raises(ValueError, match="hidden_act must be one of"):
        PanguAlphaConfig(**SMALL, hidden_act="swish")


def test_layout_is_mindformers(model):
    names = [n for n, _ in model.parameters_and_names()]
    assert "backbone.blocks.1.attention.dense1.weight" in names and "backbone.top_query_layer.output.mapping.bias" in names
    assert not any(n.startswith("backbone.blocks.2.") for n in names)  # num_layers counts the query layer
    assert "backbone.top_query_embedding.weight" in names and not any(n.startswith("lm_head") for n in names)
    assert model.kv_cache_spec() == (3, 4, 8, 8)


def test_top_query_layer_uses_the_position(model):
    """The last layer's queries are position embeddings: the same token at another position differs, and
    zeroing the top-query table changes the logits."""
    ids = np.array([[5, 9, 11, 5]])
    logits = model(ids_tensor(ids)).asnumpy()
    assert np.abs(logits[0, 0] - logits[0, 3]).max() > 1e-3
    table = model.backbone.top_query_embedding.weight
    saved = table.asnumpy().copy()
    table.set_data(type(table)(np.zeros_like(saved)))
    try:
        assert np.abs(model(ids_tensor(ids)).asnumpy() - logits).max() > 1e-3
    finally:
        table.set_data(type(table)(saved))


def test_cached_generation_equals_uncached(model):
    prompts = [[3, 7, 1, 9, 12, 40, 2], [8, 8, 20]]
    cached = model.generate(prompts, max_new_tokens=12, do_sample=False, eos_token_id=[], pad_token_id=0)
    uncached = model.generate(prompts, max_new_tokens=12, do_sample=False, eos_token_id=[], pad_token_id=0,
                              use_cache=False)
    np.testing.assert_array_equal(cached, uncached)
    alone = model.generate([prompts[1]], max_new_tokens=12, do_sample=False, eos_token_id=[])
    np.testing.assert_array_equal(cached[1, 4:], alone[0])  # the left-padded row equals the row alone
    assert len(set(cached[0, 7:].tolist())) > 1


def test_save_and_load_round_trip(model, tmp_path):
    model.save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "pangualpha" and saved["architectures"] == ["PanguAlphaHeadModel"]
    loaded = AutoModel.from_pretrained(str(tmp_path))
    assert isinstance(loaded, PanguAlphaHeadModel) and loaded.config == model.config
    ids = ids_tensor([[1, 2, 3, 4, 5, 6]])
    np.testing.assert_array_equal(loaded(ids).asnumpy(), model(ids).asnumpy())


def test_input_longer_than_seq_length_is_refused(model):
    with pytest.raises(ValueError, match=r"input of 41 tokens is longer than the 40 positions"):
        model(ids_tensor(np.ones((1, 41))))


def test_training_lowers_the_loss(tmp_path):
    """MindFormers' pre-training rows (seq_length + 1 tokens) of a repeating pattern: the loss falls."""
    import mindspore.dataset as ds

    pattern = np.random.default_rng(0).integers(0, 64, size=41).astype(np.int32)
    rows = [(np.roll(pattern, i % 5),) for i in range(48)]
    data = ds.GeneratorDataset(rows, column_names=["input_ids"], shuffle=False).batch(4)
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=2, learning_rate=3e-3, warmup_steps=2,
                             logging_steps=4, report_to="none", save_steps=100)
    state = Trainer(task="text_generation", model=PanguAlphaHeadModel.from_config(PanguAlphaConfig(**SMALL), seed=1),
                    args=args, train_dataset=data).train()
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.5, losses
