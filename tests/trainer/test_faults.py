"""Training faults (issue 15, reliability).

- Ten seeded trials: a run with evaluations and checkpoints is SIGKILLed at a moment chosen by the seed (during
  a checkpoint write, an evaluation or a training step), leaves no visible partial checkpoint, and once
  resumed ends with the losses, evaluation losses, weights and metrics.jsonl of an uninterrupted run.
- A checkpoint write the storage refuses (a file size limit, as a full disk would) stops training with an
  error naming the checkpoint, the file and the OS error, and leaves the previous checkpoint intact.
- Under msrun, a SIGKILLed worker stops the other within seconds, with a message naming the dead rank
  (mindformers/parallel/watchdog.py), and msrun exits non-zero.

The runs to kill (and the one with a file size limit) are processes of tests/trainer/fault_worker.py, started
two at a time while this process resumes the finished ones: a run's cost is mostly MindSpore's import and
the compiles of its training and evaluation steps, one core each. (MindSpore's compile cache,
MS_COMPILER_CACHE_ENABLE, would spare the compiles of all but the first process, but its graphs gave NaN
losses in these runs: it keys them by the order they are compiled in.)
"""
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import yaml

from mindformers.checkpoint import load_state_dict
from mindformers.trainer.checkpointing import PREFIX, checkpoint_step, list_checkpoints
from tests.trainer.conftest import REPO, read_jsonl
from tests.trainer.fault_worker import KINDS, MAX_STEPS, FaultPoints, train
from tests.parallel.test_watchdog import gone, wait_until
from tests.trainer.test_data_parallel import free_port

WORKER = os.path.join(REPO, "tests", "trainer", "fault_worker.py")
SEEDS = range(10)
CHECKPOINT_FILES = ["config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json",
                    "training_args.yaml"]


def outcome(state, model) -> dict:
    """A run's losses and evaluation losses by step, its first step and its final weights."""
    return {"losses": {h["step"]: h["loss"] for h in state.log_history if "loss" in h},
            "evals": {h["step"]: h["eval_loss"] for h in state.log_history if "eval_loss" in h},
            "start_step": state.start_step,
            "weights": {name: p.asnumpy() for name, p in model.parameters_and_names()}}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tok, small_chats):
    """The uninterrupted run, with the moments a kill can hit counted."""
    out = tmp_path_factory.mktemp("reference")
    with FaultPoints().installed() as points:
        state, model = train(str(out), *small_chats, tok=tok)
    return {**outcome(state, model), "counts": dict(points.counts), "metrics": read_jsonl(out / "metrics.jsonl")}


def kill_point(seed: int, counts: dict) -> tuple:
    """(kind, n): a kind of moment chosen uniformly, then one of the reference run's moments of that kind."""
    rng = random.Random(seed)
    kind = rng.choice(KINDS)
    return kind, rng.randint(1, counts[kind])


@pytest.fixture(scope="module")
def processes(reference, small_chats, tmp_path_factory):
    """The runs each seed kills, and the run with a file size limit, two at a time:
    {seed or "refuse": (output dir, kill point, future of the finished process)}."""
    env = {**os.environ, "PYTHONPATH": REPO}
    pool = ThreadPoolExecutor(max_workers=2)
    runs = {}
    for key in [*SEEDS, "refuse"]:
        out = tmp_path_factory.mktemp(f"trial{key}") / "out"
        point = kill_point(key, reference["counts"]) if key != "refuse" else ()
        command = [sys.executable, WORKER, "kill" if point else "refuse", str(out), *small_chats, *map(str, point)]
        runs[key] = (out, point, pool.submit(subprocess.run, command, cwd=REPO, env=env, capture_output=True,
                                             text=True, timeout=600))
    yield runs
    pool.shutdown(cancel_futures=True)


def assert_no_partial_checkpoint(out):
    """Every visible checkpoint is complete and readable; anything else is metrics.jsonl or a hidden
    temporary of the kind resume ignores (and the next run deletes)."""
    for name in os.listdir(out):
        if name.startswith("."):
            assert name.startswith((f".{PREFIX}", f".old-{PREFIX}")), name
        else:
            assert name == "metrics.jsonl" or name.startswith(PREFIX), name
    for path in list_checkpoints(str(out)):
        assert sorted(os.listdir(path)) == CHECKPOINT_FILES, path
        assert checkpoint_step(path) == int(os.path.basename(path)[len(PREFIX):])
        assert load_state_dict(os.path.join(path, "model.safetensors"))
        assert load_state_dict(os.path.join(path, "optimizer.safetensors"))
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            assert json.load(f)["hidden_size"] == 32
        with open(os.path.join(path, "training_args.yaml"), encoding="utf-8") as f:
            assert yaml.safe_load(f)["training"]["max_steps"] == MAX_STEPS


def assert_same_as_reference(run, reference):
    assert sorted(run["losses"]) == list(range(1, MAX_STEPS + 1)) and sorted(run["evals"]) == [2, 4, 6, 8]
    for key in ("losses", "evals"):
        steps = sorted(run[key])
        np.testing.assert_allclose([run[key][s] for s in steps], [reference[key][s] for s in steps], rtol=1e-6)
    assert sorted(run["weights"]) == sorted(reference["weights"])
    for name, value in reference["weights"].items():
        np.testing.assert_allclose(run["weights"][name], value, rtol=1e-6, atol=1e-7, err_msg=name)


def test_seeds_cover_every_kind_of_kill_point(reference):
    counts = reference["counts"]
    # 8 steps, 4 evaluations of 2 batches (before and after each), 3 checkpoints of 5 files (several moments
    # in each) and the deletion of checkpoint-3
    assert counts["step"] == 2 * MAX_STEPS and counts["eval"] == 2 * 4 * 2
    assert counts["save"] >= 3 * (2 * len(CHECKPOINT_FILES) + 1)
    assert {kill_point(seed, counts)[0] for seed in SEEDS} == set(KINDS)


@pytest.mark.parametrize("seed", SEEDS)
def test_killed_run_resumes_to_the_uninterrupted_result(seed, processes, reference, tok, small_chats):
    out, point, future = processes[seed]
    killed = future.result()
    assert killed.returncode == -signal.SIGKILL, f"kill point {point}: " + killed.stderr[-3000:]
    assert f"SIGKILL at {point[0]} #{point[1]}:" in killed.stderr
    left = sorted(os.listdir(out))
    assert_no_partial_checkpoint(out)

    resume = bool(list_checkpoints(str(out)))  # killed before the first checkpoint: start again
    state, model = train(str(out), *small_chats, tok=tok, resume=resume or None, overwrite=not resume)
    assert_same_as_reference(outcome(state, model), reference)
    # metrics.jsonl: every step and evaluation once, in order, with the reference's values
    records = read_jsonl(out / "metrics.jsonl")
    assert [(r["step"], sorted(r)) for r in records] == [(r["step"], sorted(r)) for r in reference["metrics"]]
    for got, expected in zip(records, reference["metrics"]):
        exact = {k: v for k, v in expected.items() if k not in ("time", "tokens_per_second", "step_time")}
        assert {k: got[k] for k in exact} == pytest.approx(exact, rel=1e-5)
    # the resumed run deleted the killed run's hidden temporaries; two checkpoints are kept
    assert sorted(os.listdir(out)) == ["checkpoint-6", "checkpoint-8", "metrics.jsonl"], (point, left)


# ---------------------------------------------------------------------------------------------------------
# a checkpoint write the storage refuses


def test_refused_checkpoint_write_stops_training_and_keeps_the_previous_checkpoint(processes, reference, tok,
                                                                                   small_chats):
    out, _, future = processes["refuse"]
    done = future.result()
    assert done.returncode == 1, done.stderr[-3000:]
    with open(f"{out}.json", encoding="utf-8") as f:
        error = json.load(f)
    assert (error["type"], error["errno"]) == ("CheckpointWriteError", errno.EFBIG)
    message = error["message"]
    assert f"could not save {out / 'checkpoint-6'}: writing its model.safetensors failed: File too large." in message
    assert f"the previous checkpoint {out / 'checkpoint-3'} is intact" in message
    assert "resume with resume_from_checkpoint=True" in message
    assert message in done.stderr  # what the user sees, with the OS error beneath it in the traceback
    assert error["cause"].startswith("FileWriteError(27, 'File too large')")
    # nothing of checkpoint-6, not even a hidden temporary; the log stops at the failed step
    assert sorted(os.listdir(out)) == ["checkpoint-3", "metrics.jsonl"]
    assert_no_partial_checkpoint(out)
    assert read_jsonl(out / "metrics.jsonl")[-1]["step"] == 6
    # once there is room again, the run resumes from checkpoint-3 to the uninterrupted result
    state, model = train(str(out), *small_chats, tok=tok, resume=True)
    assert state.start_step == 3
    assert_same_as_reference(outcome(state, model), reference)


# ---------------------------------------------------------------------------------------------------------
# a killed msrun worker

PEER_WORKER = os.path.join(REPO, "tests", "trainer", "peer_worker.py")


def read_int(path) -> int:
    try:
        with open(path, encoding="utf-8") as f:
            return int(f.read())
    except (FileNotFoundError, ValueError):
        return 0


def test_killed_msrun_worker_stops_the_other_naming_it(tmp_path, small_chats):
    """msrun --join=True by itself notices a dead worker within a second, SIGKILLs the others and exits 1 once
    its scheduler times their nodes out (MS_NODE_TIMEOUT: 30 s by default, 10 s here to keep the test short),
    naming a dead worker by pid only. The message naming the rank is the watchdog's, in the survivor's log,
    written by the survivor's monitor (which msrun's kill of the worker's process group does not reach)."""
    msrun = os.path.join(os.path.dirname(sys.executable), "msrun")
    if not os.path.exists(msrun):
        msrun = shutil.which("msrun") or msrun
    if not os.path.exists(msrun):
        pytest.skip("msrun (installed with mindspore) not found")
    env = {**os.environ, "PYTHONPATH": REPO, "MS_NODE_TIMEOUT": "10",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    logs = tmp_path / "logs"
    launcher = subprocess.Popen(
        [msrun, "--worker_num=2", "--local_worker_num=2", f"--master_port={free_port()}", f"--log_dir={logs}",
         "--join=True", PEER_WORKER, str(tmp_path), small_chats[0]],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # both ranks train (each step waits for the other's gradients)
        training = wait_until(lambda: read_int(tmp_path / "rank1.step") >= 3 or launcher.poll() is not None, 300)
        assert training and launcher.poll() is None, "msrun did not get to step 3"
        pids = [read_int(tmp_path / f"rank{r}.pid") for r in range(2)]
        os.kill(pids[1], signal.SIGKILL)
        killed = time.monotonic()
        assert wait_until(lambda: gone(pids[0]), 30), "rank 0 still runs 30 s after rank 1 was killed"
        stopped = time.monotonic() - killed
        output = launcher.communicate(timeout=90)[0]
        exited = time.monotonic() - killed
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for rank in range(2):  # the workers run in sessions of their own: a failed test must not leave them
            pid = read_int(tmp_path / f"rank{rank}.pid")
            if pid and not gone(pid):
                os.kill(pid, signal.SIGKILL)
        if launcher.stdout is not None and not launcher.stdout.closed:
            print(launcher.communicate()[0][-3000:])
    assert stopped < 10 and launcher.returncode != 0 and exited < 60, (stopped, exited, output[-3000:])
    # msrun's own message names a pid: the survivor's when the watchdog ended it before msrun's next poll
    assert "exit with exception. Error code: -" in output and "Distributed job exited with exception" in output
    survivor = (logs / "worker_0.log").read_text()
    assert f"[mindformers watchdog] rank 1 (pid {pids[1]}) died: its process ended during training" in survivor
    dead = (logs / "worker_1.log").read_text()
    assert f"rank 1 (pid {pids[1]}) ended during training without finishing" in dead
