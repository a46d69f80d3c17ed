"""LISA through the Trainer (mindformers/tuners/lisa): which layers move follows the drawn layers, the frozen
layers' moments are released and restart at zero, a resumed run draws and trains the same, the loss falls on
the chatterbot chats."""
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from mindformers import Trainer, TrainingArguments
from mindformers.trainer.callbacks import TrainerCallback
from mindformers.tuners import LisaCallback, LisaConfig
from mindformers.tuners.lisa import draw_layers
from tests.trainer import conftest as trainer_fixtures
from tests.trainer.conftest import tiny_llama

chats, small_chats, tok = trainer_fixtures.chats, trainer_fixtures.small_chats, trainer_fixtures.tok  # fixtures

LAYERS, ACTIVE, INTERVAL, STEPS = 4, 1, 2, 4


class Snapshots(TrainerCallback):
    """The model's weights after every step."""

    def __init__(self, model):
        self.model, self.weights = model, [self.take(model)]

    @staticmethod
    def take(model):
        return {n: p.asnumpy().copy() for n, p in model.parameters_and_names()}

    def on_step_end(self, state, logs):
        self.weights.append(self.take(self.model))


def lisa_args(out, **changes):
    return TrainingArguments(output_dir=str(out), max_steps=STEPS, batch_size=4, seq_length=64, learning_rate=2e-2,
                             lisa_activated_layers=ACTIVE, lisa_step_interval=INTERVAL, logging_steps=1, save_steps=1,
                             disable_tqdm=True, report_to=[], **changes)


def layer_of(name):
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1]) if "layers" in parts else None


@pytest.fixture(scope="module")
def run(tmp_path_factory, tok, small_chats):
    out = tmp_path_factory.mktemp("lisa")
    model = tiny_llama(num_hidden_layers=LAYERS)
    snapshots = Snapshots(model)
    trainer = Trainer(model=model, tokenizer=tok, args=lisa_args(out), train_dataset=small_chats[0],
                      callbacks=[snapshots])
    state = trainer.train()
    lisa = next(cb for cb in trainer.callbacks if isinstance(cb, LisaCallback))
    return out, snapshots.weights, state, lisa, model


def test_draws_are_uniform_seeded_and_without_replacement():
    draws = [draw_layers(7, p, 6, 2) for p in range(3000)]
    assert all(len(set(d)) == 2 for d in draws)
    assert draws == [draw_layers(7, p, 6, 2) for p in range(3000)]  # a function of (seed, period) alone
    assert draws != [draw_layers(8, p, 6, 2) for p in range(3000)]
    counts = np.bincount(np.concatenate(draws), minlength=6) / 3000
    np.testing.assert_allclose(counts, 2 / 6, atol=0.03)  # each layer in 1/3 of the periods (sd 0.009)


def test_only_drawn_layers_embeddings_and_norm_move(run):
    _, weights, _, lisa, _ = run
    expected = [draw_layers(42, p, LAYERS, ACTIVE) for p in range(STEPS // INTERVAL)]
    assert [layers for _, layers in lisa.history] == expected
    assert [step for step, _ in lisa.history] == list(range(0, STEPS, INTERVAL))
    assert len({tuple(e) for e in expected}) > 1  # the test sees the set change
    for step in range(STEPS):
        before, after = weights[step], weights[step + 1]
        moved = {n for n in before if not np.array_equal(before[n], after[n])}
        moved_layers = {layer_of(n) for n in moved} - {None}
        assert moved_layers == set(expected[step // INTERVAL]), (step, moved_layers)
        assert {"model.embed_tokens.weight", "model.norm.weight"} <= moved  # head tied to the embeddings
        drawn = [n for n in before if layer_of(n) in expected[step // INTERVAL]]
        assert set(drawn) <= moved  # every tensor of a drawn layer trains


def test_frozen_layers_moments_released_and_restart_at_zero(run):
    out, _, _, _, model = run
    beta1, beta2 = 0.9, 0.999
    for step in range(1, STEPS + 1):
        moments = load_file(os.path.join(out, f"checkpoint-{step}", "optimizer.safetensors"))
        active = draw_layers(42, (step - 1) // INTERVAL, LAYERS, ACTIVE)
        held = {layer_of(k.split(".", 1)[1]) for k in moments if k != "state_step"} - {None}
        assert held == set(active), (step, held)  # no moments for frozen layers
        # the step counter (and with it every moment) restarts with each period
        assert moments["state_step"].item() == (step - 1) % INTERVAL + 1
        if (step - 1) % INTERVAL == 0:  # one step from zero: m = (1-b1) g and v = (1-b2) g^2
            for key in [k for k in moments if k.startswith("exp_avg.")]:
                m, v = moments[key], moments["exp_avg_sq." + key.split(".", 1)[1]]
                np.testing.assert_allclose(m * m / (1 - beta1) ** 2, v / (1 - beta2), rtol=1e-3, atol=1e-12)
    names = {n for n, _ in model.parameters_and_names()}
    assert {k.split(".", 1)[1] for k in moments if k != "state_step"} <= names


def test_loss_falls_on_the_chats(run):
    _, _, state, _, _ = run
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    assert len(losses) == STEPS and losses[-1] < losses[0] - 0.5, losses


@pytest.mark.parametrize("resume_at", [3, 2])  # inside a period and at its first step
def test_resume_draws_and_trains_as_the_uninterrupted_run(run, tmp_path, tok, small_chats, resume_at):
    out, weights, _, _, _ = run
    model = tiny_llama(num_hidden_layers=LAYERS, seed=1)  # the checkpoint replaces every weight
    trainer = Trainer(model=model, tokenizer=tok, args=lisa_args(tmp_path), train_dataset=small_chats[0])
    trainer.train(resume_training=os.path.join(out, f"checkpoint-{resume_at}"))
    lisa = next(cb for cb in trainer.callbacks if isinstance(cb, LisaCallback))
    assert lisa.history[0] == (resume_at, draw_layers(42, resume_at // INTERVAL, LAYERS, ACTIVE))
    for name, param in model.parameters_and_names():
        np.testing.assert_allclose(param.asnumpy(), weights[-1][name], rtol=0, atol=1e-6, err_msg=name)


def test_bad_settings_are_refused(tok, small_chats):
    with pytest.raises(ValueError, match="lisa_activated_layers must be a positive integer"):
        LisaConfig(lisa_activated_layers=0)
    with pytest.raises(ValueError, match="lisa_step_interval must be >= 1"):
        TrainingArguments(lisa_activated_layers=1, lisa_step_interval=0)
    trainer = Trainer(model=tiny_llama(), tokenizer=tok, train_dataset=small_chats[0],
                      args=TrainingArguments(output_dir="/tmp/unused", lisa_activated_layers=3, max_steps=1,
                                             batch_size=4, seq_length=64, disable_tqdm=True, report_to=[]))
    with pytest.raises(ValueError, match="lisa_activated_layers=3 but LlamaForCausalLM has 2 decoder layers"):
        trainer.train()
