"""Resuming: a run stopped after step k and resumed from its checkpoint gives the same losses and weights as
an uninterrupted run (full training and LoRA); a process killed while writing a checkpoint leaves no
half-written checkpoint behind, and the next run resumes from the last complete one."""
import os
import subprocess
import sys

import numpy as np
import pytest

from mindformers import Trainer, TrainerCallback, TrainingArguments
from mindformers.trainer.checkpointing import list_checkpoints, resolve_resume
from tests.trainer.conftest import REPO, read_jsonl, tiny_llama

MAX_STEPS = 8


class Crash(Exception):
    pass


class CrashAt(TrainerCallback):
    """Stops the run right after optimizer step ``step`` (no checkpoint is written for it)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, state, logs):
        if state.global_step == self.step:
            raise Crash(f"stopped after step {self.step}")


def make_model(kind):
    model = tiny_llama()
    if kind == "lora":
        from mindformers.tuners import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights="gaussian"), seed=0)
    return model


def run(kind, output_dir, tok, data, resume=None, callbacks=()):
    # 24 chats in batches of 5: 5 steps an epoch, so the resumed part crosses an epoch boundary
    args = TrainingArguments(output_dir=str(output_dir), max_steps=MAX_STEPS, batch_size=5, seq_length=64,
                             learning_rate=2e-2, warmup_steps=2, lr_scheduler_type="cosine", logging_steps=1,
                             save_steps=3, disable_tqdm=True, report_to=["jsonl"])
    model = make_model(kind)
    trainer = Trainer(model=model, tokenizer=tok, args=args, train_dataset=data, callbacks=list(callbacks))
    return trainer.train(resume_training=resume), model


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, tok, small_chats, kind):
    reference, reference_model = run(kind, tmp_path / "straight", tok, small_chats[0])
    with pytest.raises(Crash):
        run(kind, tmp_path / "stopped", tok, small_chats[0], callbacks=[CrashAt(5)])
    assert [os.path.basename(c) for c in list_checkpoints(str(tmp_path / "stopped"))] == ["checkpoint-3"]
    resumed, resumed_model = run(kind, tmp_path / "stopped", tok, small_chats[0], resume=True)

    expected = {h["step"]: h["loss"] for h in reference.log_history if "loss" in h}
    got = {h["step"]: h["loss"] for h in resumed.log_history if "loss" in h}
    assert sorted(got) == list(range(1, MAX_STEPS + 1))  # steps 1-3 from the checkpoint's history
    np.testing.assert_allclose([got[s] for s in range(4, 9)], [expected[s] for s in range(4, 9)], rtol=1e-6)
    ours = dict(resumed_model.parameters_and_names())
    for name, value in reference_model.parameters_and_names():
        np.testing.assert_allclose(ours[name].asnumpy(), value.asnumpy(), rtol=1e-6, atol=1e-7, err_msg=name)
    logged = [r["step"] for r in read_jsonl(tmp_path / "stopped" / "metrics.jsonl") if "loss" in r]
    assert logged == list(range(1, MAX_STEPS + 1))  # steps 4-5 of the stopped run were replaced, not repeated


KILLED_RUN = r"""
import os, sys
sys.path.insert(0, {repo!r})
import mindformers.trainer.checkpointing as checkpointing
from mindformers import AutoTokenizer, Trainer, TrainingArguments
from tests.trainer.conftest import tiny_llama

real_save, calls = checkpointing.save_file, []

def save_then_die(tensors, path):  # the third checkpoint: write half its optimizer file, then die
    calls.append(path)
    if len(calls) < 3:
        return real_save(tensors, path)
    real_save(tensors, path)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    os._exit(9)

checkpointing.save_file = save_then_die
args = TrainingArguments(output_dir={out!r}, max_steps=6, batch_size=4, seq_length=64, learning_rate=1e-2,
                         logging_steps=1, save_steps=1, disable_tqdm=True, report_to=["jsonl"])
Trainer(model=tiny_llama(), tokenizer=AutoTokenizer.from_pretrained("smollm2_135m_instruct"), args=args,
        train_dataset={data!r}).train()
"""


def test_killed_save_leaves_no_half_written_checkpoint(tmp_path, tok, small_chats):
    out = tmp_path / "out"
    code = KILLED_RUN.format(repo=REPO, out=str(out), data=small_chats[0])
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 9, done.stderr[-2000:]
    visible = sorted(os.listdir(out))
    assert [n for n in visible if n.startswith("checkpoint-")] == ["checkpoint-1", "checkpoint-2"]
    hidden = [n for n in visible if n.startswith(".checkpoint-3.")]
    assert len(hidden) == 1  # the half-written one, under a name resume never picks
    for name in ("checkpoint-1", "checkpoint-2"):
        assert sorted(os.listdir(out / name)) == ["config.json", "model.safetensors", "optimizer.safetensors",
                                                 "trainer_state.json", "training_args.yaml"]
    assert resolve_resume(True, str(out)) == str(out / "checkpoint-2")

    args = TrainingArguments(output_dir=str(out), max_steps=4, batch_size=4, seq_length=64, learning_rate=1e-2,
                             logging_steps=1, save_steps=1, disable_tqdm=True, report_to=["jsonl"])
    state = Trainer(model=tiny_llama(), tokenizer=tok, args=args, train_dataset=small_chats[0]).train(resume_training=True)
    assert state.start_step == 2 and state.global_step == 4
    assert sorted(n for n in os.listdir(out) if "checkpoint" in n) == [f"checkpoint-{i}" for i in range(1, 5)]
