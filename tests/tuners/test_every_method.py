"""Every registered tuner method through the Trainer, selected by a model config's ``pet_config`` (MindFormers'
switch): trains, checkpoints, resumes to the same losses as an uninterrupted run (which evaluated at its end)
and predicts. Eagerly (``mode="pynative"``: 1m47 for all instead of 5m11 compiled, on 2 cores); each method's
own tests train through the compiled step.
A method added to the registry without an entry here fails ``test_every_registered_method_is_covered``."""
import numpy as np
import pytest

from mindformers import Trainer, TrainingArguments
import mindformers.tuners  # noqa: F401  (registers every method)
from mindformers.registry import TUNERS
from tests.trainer.conftest import chats, small_chats, tiny_llama, tok  # noqa: F401  (fixtures)

QV = ["q_proj", "v_proj"]
# registered method -> a small pet_config for the tiny Llama (2 layers, hidden 32)
EXAMPLES = {
    "LORA": {"pet_type": "lora", "lora_rank": 4, "lora_alpha": 8, "target_modules": QV, "init_lora_weights": "gaussian"},
    "IA3": {"pet_type": "ia3"},
    "LOHA": {"pet_type": "loha", "r": 2, "init_weights": False},
    "LOKR": {"pet_type": "lokr", "r": 4, "init_weights": False},
    "VERA": {"pet_type": "vera", "r": 8},
    "FOURIERFT": {"pet_type": "fourierft", "n_frequency": 64, "init_weights": False},
    "ADALORA": {"pet_type": "adalora", "init_r": 6, "target_r": 4, "total_step": 4, "target_modules": QV},
    "PROMPT_TUNING": {"pet_type": "prompt_tuning", "num_virtual_tokens": 4},
    "P_TUNING": {"pet_type": "p_tuning", "num_virtual_tokens": 4, "encoder_hidden_size": 16},
    "PREFIX_TUNING": {"pet_type": "ptuning2", "pre_seq_len": 4, "prefix_projection": True, "projection_dim": 16},
    "ADAPTION_PROMPT": {"pet_type": "adaption_prompt", "adapter_len": 4, "adapter_layers": 1},
    "ADAPTER": {"pet_type": "adapter", "dim": 32, "target_modules": ["mlp"], "adapter_length": 8},
    "LLAMAPRO": {"pet_type": "llama_pro", "num_new_blocks": 1},
    "NEFTUNE": {"pet_type": "neftune", "noise_alpha": 5.0},
    "LONGLORA": {"pet_type": "longlora", "r": 4, "target_modules": QV},
    "SIDE": {"pet_type": "side", "dim": 32, "target_modules": r"model\.layers\.1"},
    "RESTUNING": {"pet_type": "restuning", "root_modules": r".*layers.0$", "stem_modules": r".*layers\.\d+$",
                  "target_modules": r".*model.norm", "target_modules_hook": "input", "tuner_cfg": "res_adapter"},
}


# methods whose training draws random numbers by design (NEFTune's embedding noise): MindSpore's random stream is
# not part of a checkpoint, so the resumed steps draw other noise and their losses only agree closely
STOCHASTIC = {"NEFTUNE"}


def test_every_registered_method_is_covered():
    assert sorted(TUNERS.names()) == sorted(EXAMPLES)


def _run(method, output_dir, tok, data, resume=None):
    """4 steps (checkpoints at 2 and 4); the uninterrupted run evaluates at its end."""
    model = tiny_llama(pet_config=dict(EXAMPLES[method]))
    args = TrainingArguments(output_dir=str(output_dir), max_steps=4, batch_size=4, seq_length=64, learning_rate=2e-2,
                             logging_steps=1, save_steps=2, disable_tqdm=True, report_to=[], seed=7, mode="pynative")
    trainer = Trainer(model=model, tokenizer=tok, args=args, train_dataset=data[0],
                      eval_dataset=None if resume else data[1])
    state = trainer.train(resume_training=resume)
    return state, trainer, {h["step"]: h["loss"] for h in state.log_history if "loss" in h}


@pytest.mark.parametrize("method", sorted(EXAMPLES))
def test_trains_checkpoints_resumes_evaluates_and_predicts(method, tmp_path, tok, small_chats):
    if method not in TUNERS.names():
        pytest.fail(f"{method} is not registered")
    state, _, straight = _run(method, tmp_path / "straight", tok, small_chats)
    assert sorted(straight) == [1, 2, 3, 4] and all(np.isfinite(list(straight.values())))
    assert np.isfinite(state.log_history[-1]["eval_loss"])
    _, resumed_trainer, resumed = _run(method, tmp_path / "straight", tok, small_chats,
                                    resume=str(tmp_path / "straight" / "checkpoint-2"))
    np.testing.assert_allclose([resumed[3], resumed[4]], [straight[3], straight[4]],
                               rtol=1e-2 if method in STOCHASTIC else 1e-5, err_msg=method)
    resumed_trainer.model.generation_mode = "pynative"
    text = resumed_trainer.predict("Hello, how are you?", max_new_tokens=3, do_sample=False)
    assert isinstance(text[0] if isinstance(text, list) else text, (str, dict))
