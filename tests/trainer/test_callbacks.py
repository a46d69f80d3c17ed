"""Training callbacks driven through a simulated run: JSONL lines, TensorBoard events, the loss PNG, the bar."""
import glob
import json
import math
import os
import re
import struct
import types

import pytest

from mindformers.trainer.callbacks import (
    CallbackList,
    JsonlLoggerCallback,
    LossCurveCallback,
    ProgressCallback,
    TrainerCallback,
    default_callbacks,
    loss_points,
)
from mindformers.trainer.state import TrainerState

MAX_STEPS = 20
LOGGING_STEPS = 2
EVAL_STEPS = 5
SAVE_STEPS = 10
TOKENS_PER_STEP = 512


def make_args(output_dir, **overrides):
    fields = dict(output_dir=str(output_dir), logging_steps=LOGGING_STEPS,
                  report_to=["jsonl", "tensorboard", "png"], disable_tqdm=False)
    fields.update(overrides)
    return types.SimpleNamespace(**fields)


def train_loss(step):
    return 2.0 + 3.0 * math.exp(-step / 8.0)


def learning_rate(step):
    return 3e-4 * (1 - step / MAX_STEPS) + 1e-6


def eval_loss(step):
    return train_loss(step) + 0.1


def simulate(callbacks, state, args, stop_at=MAX_STEPS, end=True):
    """What the Trainer does: hooks in order, log_history kept by the trainer, not the callbacks."""
    callbacks.on_train_begin(state, args)
    for step in range(state.start_step + 1, stop_at + 1):
        state.global_step = step
        state.epoch = step / 10.0
        state.tokens_seen += TOKENS_PER_STEP
        if step % LOGGING_STEPS == 0:
            logs = {"loss": train_loss(step), "lr": learning_rate(step), "grad_norm": 1.0 / step,
                    "tokens_per_second": 12345.678 + step, "step_time": 0.0415}
            state.log_history.append({**logs, "step": step, "epoch": state.epoch})
            callbacks.on_step_end(state, logs)
        if step % EVAL_STEPS == 0:
            metrics = {"eval_loss": eval_loss(step), "eval_perplexity": math.exp(eval_loss(step)),
                       "eval_accuracy": 0.25 + step / 100}
            state.log_history.append({**metrics, "step": step, "epoch": state.epoch})
            callbacks.on_evaluate(state, metrics)
        if step % SAVE_STEPS == 0:
            callbacks.on_save(state, os.path.join(state.output_dir, f"checkpoint-{step}"))
    if end:
        callbacks.on_train_end(state)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def read_events(path):
    """The ``Event`` protobufs of one event file, checking its TFRecord framing.

    A TFRecord is: uint64 length, uint32 masked crc32c(length), data, uint32 masked crc32c(data); each
    data is a serialized tensorflow ``Event`` protobuf.
    """
    from tensorboardX.proto import event_pb2
    from tensorboardX.record_writer import masked_crc32c

    with open(path, "rb") as f:
        data = f.read()
    events, pos = [], 0
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        assert header_crc == masked_crc32c(header)
        payload = data[pos + 12:pos + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        assert payload_crc == masked_crc32c(payload)
        pos += 16 + length
        events.append(event_pb2.Event.FromString(payload))
    return events


def event_files(log_dir):
    files = sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*")), key=os.path.getmtime)
    assert files, f"no event file in {log_dir}: {os.listdir(log_dir)}"
    return files


def read_scalars(path):
    """{tag: [(step, value), ...]} of one event file."""
    scalars = {}
    for event in read_events(path):
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


@pytest.fixture()
def full_run(tmp_path, capsys):
    """One 20-step run with all the default callbacks; returns (output_dir, state, captured stderr)."""
    args = make_args(tmp_path / "run")
    state = TrainerState(max_steps=MAX_STEPS, num_train_epochs=2, output_dir=args.output_dir)
    simulate(CallbackList(default_callbacks(args)), state, args)
    return tmp_path / "run", state, capsys.readouterr().err


def test_jsonl_lines(full_run):
    out, state, _ = full_run
    records = read_jsonl(out / "metrics.jsonl")
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    assert len(train) == MAX_STEPS // LOGGING_STEPS == 10
    assert len(evals) == MAX_STEPS // EVAL_STEPS == 4
    assert len(records) == 14
    steps = [r["step"] for r in records]
    assert steps == sorted(steps)
    assert [r["step"] for r in train] == list(range(2, 21, 2))
    assert [r["step"] for r in evals] == [5, 10, 15, 20]
    for r in train:
        assert set(r) == {"step", "epoch", "time", "loss", "lr", "grad_norm", "tokens_per_second", "step_time"}
        assert r["loss"] == pytest.approx(train_loss(r["step"]), rel=1e-5)
        assert r["lr"] == pytest.approx(learning_rate(r["step"]), rel=1e-5)  # 6 significant digits, not 0
        assert r["epoch"] == pytest.approx(r["step"] / 10)
        assert r["tokens_per_second"] == pytest.approx(12345.7 + r["step"], abs=0.05)
    assert train[-1]["lr"] == pytest.approx(1e-6)
    assert train[0]["loss"] == 4.3364  # 2 + 3 exp(-1/4) = 4.33640235..., kept to 6 significant digits
    for r in evals:
        assert set(r) == {"step", "epoch", "time", "eval_loss", "eval_perplexity", "eval_accuracy"}
        assert r["eval_perplexity"] == pytest.approx(math.exp(eval_loss(r["step"])), rel=1e-5)
        assert r["eval_accuracy"] == pytest.approx(0.25 + r["step"] / 100)
    times = [r["time"] for r in records]
    assert times == sorted(times) and abs(times[-1] - state.start_time) < 60


def test_tensorboard_events(full_run):
    out, _, _ = full_run
    (path,) = event_files(out / "tensorboard")
    scalars = read_scalars(path)
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_second", "train/step_time",
            "eval/loss", "eval/perplexity", "eval/accuracy"} <= set(scalars)
    assert [s for s, _ in scalars["train/loss"]] == list(range(2, 21, 2))
    for step, value in scalars["train/loss"]:
        assert value == pytest.approx(train_loss(step), rel=1e-6)  # simple_value is a float32
    for step, value in scalars["train/lr"]:
        assert value == pytest.approx(learning_rate(step), rel=1e-6)
    assert [s for s, _ in scalars["eval/loss"]] == [5, 10, 15, 20]
    for step, value in scalars["eval/perplexity"]:
        assert value == pytest.approx(math.exp(eval_loss(step)), rel=1e-6)


def test_loss_curve_png(full_run):
    import matplotlib.image

    out, _, _ = full_run
    path = out / "loss_curve.png"
    with open(path, "rb") as f:
        header = f.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])  # the IHDR chunk
    assert (width, height) == (800, 500)
    pixels = matplotlib.image.imread(str(path))
    assert pixels.shape[:2] == (500, 800)
    assert pixels[..., :3].std() > 0.05  # something was drawn on the white canvas
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]  # no temporary file left behind


def test_progress_bar(full_run):
    _, _, err = full_run
    final = err.rstrip().split("\r")[-1]
    assert f"{MAX_STEPS}/{MAX_STEPS}" in final
    assert "loss=2.2463" in final  # 2 + 3 exp(-20/8) = 2.24626
    assert "lr=1.00e-06" in final
    assert "tok/s=12.4k" in final
    assert "<00:00" in final  # tqdm's ETA
    # Evaluations are printed on their own lines (tqdm.write first clears the bar with "\r").
    lines = [line for line in re.split(r"[\r\n]", err) if line.startswith("step ")]
    assert len(lines) == 4
    assert lines[0].startswith("step 5: eval_loss=")
    assert "eval_perplexity=" in lines[0] and "eval_accuracy=0.3000" in lines[0]


def test_resume_appends(tmp_path, capsys):
    args = make_args(tmp_path)
    state = TrainerState(max_steps=MAX_STEPS, output_dir=args.output_dir)
    callbacks = CallbackList(default_callbacks(args))
    # The first run is killed at step 13 (no on_train_end); its last checkpoint is step 10.
    simulate(callbacks, state, args, stop_at=13, end=False)
    first = read_jsonl(tmp_path / "metrics.jsonl")  # flushed line by line, readable although not closed
    assert [r["step"] for r in first] == [2, 4, 5, 6, 8, 10, 10, 12]
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 14, "lo')  # a line the kill cut short
    for cb in callbacks:  # what process exit does to the open files and the bar (the PNG is not drawn)
        if not isinstance(cb, LossCurveCallback):
            cb.on_train_end(state)
    capsys.readouterr()

    # The resumed run: state restored from checkpoint-10.
    resumed = TrainerState(max_steps=MAX_STEPS, output_dir=args.output_dir, global_step=10, start_step=10,
                           epoch=1.0, log_history=[e for e in state.log_history if e["step"] <= 10])
    simulate(CallbackList(default_callbacks(args)), resumed, args)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert records[:7] == first[:7]  # the log up to the checkpoint is kept as it was
    steps = [r["step"] for r in records]
    assert steps == [2, 4, 5, 6, 8, 10, 10, 12, 14, 15, 16, 18, 20, 20]
    err = capsys.readouterr().err
    assert err.lstrip("\r").startswith("train:  50%") and f"10/{MAX_STEPS}" in err.split("\r")[1]
    assert f"{MAX_STEPS}/{MAX_STEPS}" in err.rstrip().split("\r")[-1]
    # TensorBoard: the resumed run writes a second event file, which starts with a purge marker at step 10
    # (TensorBoard then hides steps 11-13 of the killed run) and holds steps 11-20.
    killed, resumed_file = event_files(tmp_path / "tensorboard")
    assert [s for s, _ in read_scalars(killed)["train/loss"]] == [2, 4, 6, 8, 10, 12]
    from tensorboardX.proto.event_pb2 import SessionLog

    starts = [e.step for e in read_events(resumed_file)
              if e.HasField("session_log") and e.session_log.status == SessionLog.START]
    assert starts == [10]
    assert [s for s, _ in read_scalars(resumed_file)["train/loss"]] == [12, 14, 16, 18, 20]
    assert [s for s, _ in read_scalars(resumed_file)["eval/loss"]] == [15, 20]
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000
    assert [s for s, _ in loss_points(resumed.log_history)["train"]] == list(range(2, 21, 2))


def test_fresh_run_starts_a_new_log(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 99, "loss": 1.0}\n')
    args = make_args(tmp_path, report_to=["jsonl"], disable_tqdm=True)
    simulate(CallbackList(default_callbacks(args)), TrainerState(max_steps=4, output_dir=str(tmp_path)), args,
             stop_at=4)
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [2, 4]


def test_non_main_process_writes_nothing(tmp_path, capsys):
    args = make_args(tmp_path / "rank1")
    state = TrainerState(max_steps=MAX_STEPS, output_dir=args.output_dir, is_main_process=False)
    simulate(CallbackList(default_callbacks(args)), state, args)
    assert not (tmp_path / "rank1").exists()
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_step_end_every_step_and_empty_logs(tmp_path, capsys):
    """A trainer that calls on_step_end every step, with empty logs off the logging steps."""
    state = TrainerState(max_steps=6, output_dir=str(tmp_path))
    jsonl, bar = JsonlLoggerCallback(), ProgressCallback()
    callbacks = CallbackList([bar, jsonl])
    callbacks.on_train_begin(state, None)  # args missing: output_dir comes from the state
    for step in range(1, 7):
        state.global_step = step
        callbacks.on_step_end(state, {"loss": 1.5, "lr": 1e-3, "tokens_per_second": 900} if step == 3 else {})
        assert bar._bar.n == step
    callbacks.on_train_end(state)
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [3]
    assert "6/6" in capsys.readouterr().err.split("\r")[-1]


def test_json_values(tmp_path):
    import numpy as np

    state = TrainerState(output_dir=str(tmp_path))
    cb = JsonlLoggerCallback()
    cb.on_train_begin(state, None)
    cb.on_step_end(state, {"loss": float("nan"), "lr": np.float32(2e-5), "n": np.int64(7), "tag": "x"})
    cb.on_train_end(state)
    (record,) = read_jsonl(tmp_path / "metrics.jsonl")
    assert record["loss"] is None and record["lr"] == 2e-5 and record["n"] == 7 and record["tag"] == "x"
    with pytest.raises(RuntimeError, match="on_train_begin"):
        cb.on_step_end(state, {"loss": 1.0})


def test_no_loss_no_png(tmp_path):
    state = TrainerState(output_dir=str(tmp_path))
    cb = LossCurveCallback()
    cb.on_train_end(state)
    assert not (tmp_path / "loss_curve.png").exists()


def test_default_callbacks():
    names = lambda cbs: [type(cb).__name__ for cb in cbs]  # noqa: E731
    everything = ["ProgressCallback", "JsonlLoggerCallback", "TensorBoardCallback", "LossCurveCallback"]
    assert names(default_callbacks(types.SimpleNamespace())) == everything
    assert names(default_callbacks(types.SimpleNamespace(report_to="all"))) == everything
    assert names(default_callbacks(types.SimpleNamespace(report_to="none", disable_tqdm=True))) == []
    assert names(default_callbacks(types.SimpleNamespace(report_to=["png"], disable_tqdm=True))) == [
        "LossCurveCallback"]
    with pytest.raises(ValueError, match=r"unknown report_to name\(s\) \['wandb'\]; valid names are"):
        default_callbacks(types.SimpleNamespace(report_to=["jsonl", "wandb"]))


def test_callback_list():
    calls = []

    class Recorder(TrainerCallback):
        def __init__(self, name="r"):
            self.name = name

        def on_evaluate(self, state, metrics):
            calls.append((self.name, metrics["eval_loss"]))

        def on_train_end(self, state):
            calls.append((self.name, "end"))

    class Failing(TrainerCallback):
        def on_train_end(self, state):
            raise OSError("disk full")

    first = Recorder("a")
    callbacks = CallbackList([first, ProgressCallback])
    assert isinstance(callbacks.callbacks[1], ProgressCallback)  # a class is instantiated
    callbacks.add(Recorder("b"))
    callbacks.on_evaluate(TrainerState(is_main_process=False), {"eval_loss": 2.0})
    assert calls == [("a", 2.0), ("b", 2.0)]
    assert isinstance(callbacks.pop(ProgressCallback), ProgressCallback)
    assert callbacks.pop(ProgressCallback) is None
    callbacks.remove(first)
    assert len(callbacks) == 1 and callbacks.callbacks[0].name == "b"
    with pytest.raises(ValueError, match="ProgressCallback is not in the callbacks"):
        callbacks.remove(ProgressCallback)
    with pytest.raises(TypeError, match="TrainerCallback"):
        callbacks.add(object())
    # A failing on_train_end does not stop the others from closing; its error is raised afterwards.
    callbacks = CallbackList([Failing(), Recorder("c")])
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        callbacks.on_train_end(TrainerState())
    assert calls == [("c", "end")]
