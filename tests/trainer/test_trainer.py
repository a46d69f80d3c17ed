"""The Trainer on real chats (chatterbot, SmolLM2's tokenizer) and tiny random Llama models: what a run writes,
that its numbers are right (compiled = eager = accumulated steps; evaluation = a hand computation), the
task registry, MindSpore datasets, LoRA fine-tuning, and bad input."""
import json
import math
import os

import numpy as np
import pytest
from mindspore import Tensor
from safetensors.numpy import load_file

from mindformers import Trainer, TrainerCallback, TrainingArguments, build_dataset
from mindformers.trainer.checkpointing import list_checkpoints

from tests.trainer.conftest import read_jsonl, tiny_classifier, tiny_llama, write_jsonl

QUIET = dict(disable_tqdm=True, report_to=[], save_steps=0, logging_steps=1)


def make_args(tmp_path, **fields):
    return TrainingArguments(**{"output_dir": str(tmp_path / "out"), "seq_length": 64, "batch_size": 4,
                                "learning_rate": 1e-2, "warmup_steps": 0, **QUIET, **fields})


def losses(state):
    return [h["loss"] for h in state.log_history if "loss" in h]


def test_run_writes_logs_checkpoints_and_curve(tmp_path, tok, small_chats):
    args = make_args(tmp_path, max_steps=4, logging_steps=2, save_steps=2, save_total_limit=1,
                     report_to=["jsonl", "tensorboard", "png"])
    trainer = Trainer(task="text_generation", model=tiny_llama(), tokenizer=tok, args=args,
                      train_dataset=small_chats[0], eval_dataset=small_chats[1])
    state = trainer.train()
    out = tmp_path / "out"
    assert state.global_step == 4
    assert [os.path.basename(c) for c in list_checkpoints(str(out))] == ["checkpoint-4"]  # checkpoint-2 rotated
    assert sorted(os.listdir(out / "checkpoint-4")) == ["config.json", "model.safetensors", "optimizer.safetensors",
                                                       "trainer_state.json", "training_args.yaml"]
    records = read_jsonl(out / "metrics.jsonl")
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [2, 4]
    assert all(r["tokens_per_second"] > 0 and r["lr"] > 0 and r["grad_norm"] > 0 for r in train)
    assert train[-1]["loss"] < train[0]["loss"]
    final_eval = [r for r in records if "eval_loss" in r][-1]
    assert final_eval["eval_perplexity"] == pytest.approx(math.exp(final_eval["eval_loss"]), rel=1e-4)
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(out / "tensorboard"))
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = TrainingArguments.from_yaml(str(out / "checkpoint-4" / "training_args.yaml"))
    assert saved == args


def test_compiled_eager_and_accumulated_steps_agree(tmp_path, tok, small_chats):
    """Three steps of batch 4: compiled, eager, and as 2 accumulated micro-batches of 2 give the same run
    (micro-batches hold different numbers of answer tokens: the step is still the mean over all of them)."""
    runs = {}
    for name, fields in {"jit": {}, "pynative": {"mode": "pynative"},
                         "accumulated": {"batch_size": 2, "gradient_accumulation_steps": 2}}.items():
        args = make_args(tmp_path / name, max_steps=3, seq_length=64, **fields)
        trainer = Trainer(model=tiny_llama(), tokenizer=tok, args=args, train_dataset=small_chats[0])
        state = trainer.train()
        runs[name] = (losses(state), [h["grad_norm"] for h in state.log_history if "grad_norm" in h])
    assert runs["jit"][0][-1] < runs["jit"][0][0]
    for name in ("pynative", "accumulated"):
        np.testing.assert_allclose(runs[name][0], runs["jit"][0], rtol=1e-4)
        np.testing.assert_allclose(runs[name][1], runs["jit"][1], rtol=1e-3)


def test_one_sgd_step_is_weight_minus_lr_times_gradient(tmp_path, tok, small_chats):
    """The update the Trainer applies, checked against gradients computed directly."""
    import mindspore as ms

    model = tiny_llama()
    data = build_dataset(small_chats[0], tok, seq_length=64)
    batch = next(data.batches(4, shuffle=True, seed=42, epoch=0, pad_to_multiple_of=64))
    before = {name: p.asnumpy().copy() for name, p in model.parameters_and_names()}
    params = model.trainable_params()

    def loss_of(ids, mask, labels):
        return model(ids, mask, None, labels)[0]

    loss, grads = ms.value_and_grad(loss_of, None, params)(*(Tensor(batch[k]) for k in ("input_ids", "attention_mask", "labels")))
    expected = {p.name: before[p.name] - 0.5 * g.asnumpy() for p, g in zip(params, grads)}
    args = make_args(tmp_path, max_steps=1, optim="sgd", learning_rate=0.5, max_grad_norm=None, seq_length=64)
    state = Trainer(model=model, tokenizer=tok, args=args, train_dataset=data).train()
    assert losses(state)[0] == pytest.approx(float(loss.asnumpy()), rel=1e-5)
    for name, value in expected.items():
        np.testing.assert_allclose(dict(model.parameters_and_names())[name].asnumpy(), value, atol=1e-6)


def test_evaluate_equals_token_weighted_loss(tmp_path, tok, small_chats):
    model = tiny_llama(seed=3)
    trainer = Trainer(model=model, tokenizer=tok, args=make_args(tmp_path, eval_batch_size=3),
                      eval_dataset=small_chats[1])
    metrics = trainer.evaluate()
    data = build_dataset(small_chats[1], tok, seq_length=64)
    total, count = 0.0, 0
    for i in range(len(data)):
        row = data[i]
        logits = model(Tensor(row["input_ids"][None].astype(np.int32))).asnumpy()[0]
        labels = row["labels"][1:]
        logp = logits[:-1] - np.log(np.exp(logits[:-1] - logits[:-1].max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits[:-1].max(-1, keepdims=True)
        keep = labels != -100
        total -= logp[np.arange(len(labels))[keep], labels[keep]].sum()
        count += keep.sum()
    assert metrics["eval_loss"] == pytest.approx(total / count, rel=1e-4)
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)


def test_text_classification_learns_and_reports_accuracy(tmp_path, tok):
    words = {"positive": ["great", "good", "lovely", "happy"], "negative": ["awful", "bad", "sad", "terrible"]}
    rng = np.random.default_rng(0)
    records = [{"text": f"the day was {rng.choice(words[label])} today", "label": label}
               for label in rng.choice(["negative", "positive"], 64)]
    train = write_jsonl(tmp_path / "train.jsonl", records[:48])
    held = write_jsonl(tmp_path / "eval.jsonl", records[48:])
    model = tiny_classifier()
    model.config.id2label = {0: "negative", 1: "positive"}
    trainer = Trainer(task="text_classification", model=model, tokenizer=tok, train_dataset=train, eval_dataset=held,
                      args=make_args(tmp_path, max_steps=24, batch_size=8, learning_rate=3e-2, seq_length=16))
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert set(after) == {"eval_loss", "eval_accuracy"}
    assert after["eval_accuracy"] == 1.0 and after["eval_loss"] < before["eval_loss"]
    predicted = trainer.predict(input_data=["the day was lovely today", "the day was terrible today"])
    assert [p["label"] for p in predicted] == ["positive", "negative"]


def test_mindspore_dataset_as_given(tmp_path, tok, small_chats):
    import mindspore.dataset as ds

    data = build_dataset(small_chats[0], tok, seq_length=64)
    rows = [data.collate([i, i + 1], pad_to_multiple_of=32) for i in range(0, 8, 2)]

    def generator():
        for row in rows:
            for j in range(2):
                yield row["input_ids"][j], row["labels"][j]

    dataset = ds.GeneratorDataset(generator, column_names=["input_ids", "labels"], shuffle=False).batch(2)
    args = make_args(tmp_path, num_train_epochs=3)
    state = Trainer(model=tiny_llama(), tokenizer=tok, args=args, train_dataset=dataset).train()
    assert state.global_step == 12  # 4 batches x 3 epochs
    assert np.mean(losses(state)[-4:]) < np.mean(losses(state)[:4])


def test_lora_finetune_saves_adapter_only_and_generates(tmp_path, tok, small_chats):
    from mindformers.tuners import LoraConfig, PeftModel, get_peft_model

    base = tiny_llama()
    base_weights = {k: v.asnumpy().copy() for k, v in base.parameters_and_names()}
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights="gaussian"))
    args = make_args(tmp_path, max_steps=4, save_steps=2, learning_rate=5e-2)
    trainer = Trainer(model=model, tokenizer=tok, args=args, train_dataset=small_chats[0])
    state = trainer.finetune()
    assert losses(state)[-1] < losses(state)[0]
    checkpoint = tmp_path / "out" / "checkpoint-4"
    assert sorted(os.listdir(checkpoint)) == ["adapter_config.json", "adapter_model.safetensors",
                                              "optimizer.safetensors", "trainer_state.json", "training_args.yaml"]
    adapter = load_file(str(checkpoint / "adapter_model.safetensors"))
    assert len(adapter) == 2 * 2 * 2 and all(".lora_" in k for k in adapter)  # 2 layers x q,v x A,B
    for name, value in base.parameters_and_names():  # the base stays frozen
        if "lora_" not in name:
            np.testing.assert_array_equal(value.asnumpy(), base_weights[name])
    reloaded = PeftModel.from_pretrained(tiny_llama(), str(checkpoint))
    ids = Tensor(np.array([[1, 504, 3101, 28, 253]], np.int32))
    np.testing.assert_allclose(reloaded(ids)[0].asnumpy(), model(ids)[0].asnumpy(), atol=1e-5)
    text = trainer.predict(input_data="Hello", max_new_tokens=4, do_sample=False)
    assert text[0]["text_generation_text"][0].startswith("Hello")


def test_sink_mode_warns_and_trains(tmp_path, tok, small_chats, caplog):
    args = make_args(tmp_path, max_steps=1, sink_mode=True, seq_length=64)
    state = Trainer(model=tiny_llama(), tokenizer=tok, args=args, train_dataset=small_chats[0]).train()
    assert state.global_step == 1
    assert "sink_mode=True" in caplog.text


def test_finetune_checkpoint_loads_weights(tmp_path, tok, small_chats):
    source = tiny_llama(seed=7)
    source.save_pretrained(str(tmp_path / "weights"))
    model = tiny_llama(seed=0)
    trainer = Trainer(model=model, tokenizer=tok, args=make_args(tmp_path), eval_dataset=small_chats[1])
    ours = trainer.evaluate(eval_checkpoint=str(tmp_path / "weights"))
    reference = Trainer(model=tiny_llama(seed=7), tokenizer=tok, args=make_args(tmp_path),
                        eval_dataset=small_chats[1]).evaluate()
    assert ours["eval_loss"] == pytest.approx(reference["eval_loss"], rel=1e-6)


def test_callbacks_see_every_step(tmp_path, tok, small_chats):
    seen = []

    class Record(TrainerCallback):
        def on_step_end(self, state, logs):
            seen.append((state.global_step, sorted(logs)))

    args = make_args(tmp_path, max_steps=3, logging_steps=2, seq_length=64)
    Trainer(model=tiny_llama(), tokenizer=tok, args=args, train_dataset=small_chats[0], callbacks=[Record()]).train()
    assert [s for s, _ in seen] == [1, 2, 3]
    assert seen[0][1] == [] and "loss" in seen[1][1] and "loss" in seen[2][1]


# ---------------------------------------------------------------------------------------------- bad input
def test_unknown_yaml_keys(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("training:\n  learning_rate: 1e-4\n  lerning_rate: 1e-3\nmodel: {}\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lerning_rate'\].*valid keys: .*learning_rate"):
        Trainer(args=str(path))
    path.write_text("training: {}\ntrainset: {path: x.jsonl}\n")
    with pytest.raises(ValueError, match=r"unknown section\(s\) \['trainset'\]; valid: .*train_dataset"):
        Trainer(args=str(path))


def test_broken_dataset_line_names_the_line(tmp_path, tok, small_chats):
    lines = open(small_chats[0], encoding="utf-8").read().splitlines()
    lines[5] = lines[5][:-7]
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(lines) + "\n")
    trainer = Trainer(model=tiny_llama(), tokenizer=tok, args=make_args(tmp_path, max_steps=1), train_dataset=str(broken))
    with pytest.raises(ValueError, match=r"broken\.jsonl:6: invalid JSON"):
        trainer.train()
    assert not (tmp_path / "out").exists()


def test_batch_larger_than_data(tmp_path, tok, small_chats):
    few = write_jsonl(tmp_path / "few.jsonl", read_jsonl(small_chats[0])[:3])
    trainer = Trainer(model=tiny_llama(), tokenizer=tok, args=make_args(tmp_path, batch_size=8), train_dataset=few)
    with pytest.raises(ValueError, match=r"batch_size=8 x 1 process\(es\) is larger than the training data \(3 examples"):
        trainer.train()


def test_missing_resume_checkpoint_and_earlier_run_keep_files(tmp_path, tok, small_chats):
    out = tmp_path / "out"
    args = make_args(tmp_path, max_steps=2, save_steps=1, report_to=["jsonl"])
    Trainer(model=tiny_llama(), tokenizer=tok, args=args, train_dataset=small_chats[0]).train()
    snapshot = {p: open(os.path.join(root, p), "rb").read() for root, _, files in os.walk(out) for p in files}

    def unchanged():
        return {p: open(os.path.join(root, p), "rb").read() for root, _, files in os.walk(out) for p in files} == snapshot

    trainer = Trainer(model=tiny_llama(), tokenizer=tok, args=args, train_dataset=small_chats[0])
    with pytest.raises(FileNotFoundError, match=r"checkpoint to resume from not found: .*checkpoint-7.*checkpoint-1"):
        trainer.train(resume_training=str(out / "checkpoint-7"))
    assert unchanged()
    with pytest.raises(FileExistsError, match=r"holds an earlier run's \['checkpoint-1', 'checkpoint-2', 'metrics.jsonl'\]"):
        trainer.train()
    assert unchanged()
    with pytest.raises(FileNotFoundError, match="resume_from_checkpoint=True but .* holds no checkpoint"):
        Trainer(model=tiny_llama(), tokenizer=tok, args=make_args(tmp_path / "empty", max_steps=1),
                train_dataset=small_chats[0]).train(resume_training=True)


def test_trainer_needs_a_trainable_task_and_a_model():
    with pytest.raises(ValueError, match=r"task 'feature_extraction' has no trainable model; trainable tasks: "):
        Trainer(task="feature_extraction", model="x")
    with pytest.raises(ValueError, match="no model"):
        Trainer(args=TrainingArguments())
