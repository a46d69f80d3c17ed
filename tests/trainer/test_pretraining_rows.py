"""MindFormers' documented pre-training example: a GeneratorDataset of ``seq_length + 1``-token rows
trains ``GPT2LMHeadModel(GPT2Config(seq_length=...))`` (inputs ``row[:-1]``, labels ``row[1:]``)."""
import numpy as np
import pytest

from mindformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
from mindformers.trainer.trainer import fit_rows
from tests.conftest import ids_tensor


def rows(length, count=32):
    base = np.random.default_rng(0).integers(0, 50, size=length).astype(np.int32)
    return [(np.roll(base, i % 4),) for i in range(count)]


def test_seq_length_plus_one_rows_train_gpt2(tmp_path):
    import mindspore.dataset as ds

    model = GPT2LMHeadModel(GPT2Config(num_layers=2, hidden_size=32, num_heads=4, vocab_size=50, seq_length=64,
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    data = ds.GeneratorDataset(rows(65), column_names=["input_ids"], shuffle=False).batch(4)
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=2, learning_rate=3e-3, warmup_steps=2,
                             logging_steps=4, report_to="none")
    state = Trainer(task="text_generation", model=model, args=args, train_dataset=data).train()
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    assert losses[-1] < losses[0] - 0.5, losses


def test_the_loss_of_a_long_row_scores_every_target():
    """A 65-token row: the model sees tokens 0..63 and position t is scored against token t + 1, all 64."""
    model = GPT2LMHeadModel.from_config(GPT2Config(num_layers=1, hidden_size=16, num_heads=2, vocab_size=50,
                                                   seq_length=64), seed=0)
    row = np.random.default_rng(1).integers(0, 50, size=(1, 65))
    batch = fit_rows({"input_ids": row, "attention_mask": np.ones_like(row), "labels": row}, 64, "causal_lm")
    assert batch["input_ids"].shape == (1, 64) and batch["labels"].shape == (1, 65)
    loss, logits = model(ids_tensor(batch["input_ids"]), labels=ids_tensor(batch["labels"]))
    logits = logits.asnumpy()[0].astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -logp[np.arange(64), row[0, 1:]].mean()
    assert abs(float(loss.asnumpy()) - expected) < 1e-5


def test_rows_the_model_cannot_take_name_seq_length():
    row = np.zeros((2, 70), np.int32)
    with pytest.raises(ValueError, match=r"rows of 70 tokens, but the model takes at most seq_length=64"):
        fit_rows({"input_ids": row, "attention_mask": row, "labels": row}, 64, "causal_lm")
    model = GPT2LMHeadModel.from_config(GPT2Config(num_layers=1, hidden_size=16, num_heads=2, vocab_size=50,
                                                   seq_length=64), seed=0)
    with pytest.raises(ValueError, match="input of 65 tokens is longer than the 64 positions GPT2LMHeadModel has"):
        model(ids_tensor(np.zeros((1, 65))))
