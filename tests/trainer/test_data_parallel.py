"""Data parallel on CPU with msrun: two workers, each reading its own shard, end with identical weights,
equal to one process training on the global batch (the chats have different lengths, so this also checks
that the ranks' gradients are weighted by their answer tokens).

The workers use SGD: its update is linear in the gradient, so the comparison checks the averaged gradient
itself. (With AdamW, embedding rows whose gradients are ~1e-9 get m / sqrt(v) ~ +-1 either way, so float
rounding in the all-reduce shows up as full-size differences in a few of them.)"""
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.trainer.conftest import REPO

WORKER = os.path.join(REPO, "tests", "trainer", "dp_worker.py")
STEPS = 3


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_msrun(worker: str, workers: int, argv, log_dir) -> None:
    """Run ``worker`` with ``argv`` under msrun with ``workers`` processes on this machine (0: one plain
    process); fail with the workers' logs if it does not exit cleanly."""
    # msrun starts its workers with the `python` found on PATH: make it this environment's
    env = {**os.environ, "PYTHONPATH": REPO,
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    if workers == 0:
        done = subprocess.run([sys.executable, worker, *argv], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        return
    # msrun of this interpreter's environment: its workers run with its python (and packages)
    msrun = os.path.join(os.path.dirname(sys.executable), "msrun")
    if not os.path.exists(msrun):
        msrun = shutil.which("msrun") or msrun
    if not os.path.exists(msrun):
        pytest.skip("msrun (installed with mindspore) not found")
    done = subprocess.run(
        [msrun, f"--worker_num={workers}", f"--local_worker_num={workers}", f"--master_port={free_port()}",
         f"--log_dir={log_dir}", "--join=True", worker, *argv],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode:
        logs = "".join(open(os.path.join(log_dir, n)).read()[-3000:] for n in sorted(os.listdir(log_dir)))
        raise AssertionError(done.stdout[-2000:] + done.stderr[-2000:] + logs)


@pytest.fixture(scope="module")
def runs(small_chats, tmp_path_factory):
    out = tmp_path_factory.mktemp("dp")
    run_msrun(WORKER, 2, [str(out), small_chats[0], "2", str(STEPS), "True"], out / "logs")
    run_msrun(WORKER, 0, [str(out), small_chats[0], "4", str(STEPS), "False"], out / "logs_single")
    return out


def load(out, size, rank):
    with open(out / f"world{size}_rank{rank}.json") as f:
        return dict(np.load(out / f"world{size}_rank{rank}.npz")), json.load(f)


def test_ranks_hold_identical_weights(runs):
    w0, info0 = load(runs, 2, 0)
    w1, info1 = load(runs, 2, 1)
    assert (info0["rank"], info1["rank"], info0["world_size"]) == (0, 1, 2)
    for name in w0:
        np.testing.assert_array_equal(w0[name], w1[name], err_msg=name)
    assert info0["losses"] == info1["losses"]  # both log the global loss


def test_two_workers_equal_one_process_on_the_global_batch(runs):
    parallel, info = load(runs, 2, 0)
    single, reference = load(runs, 1, 0)
    start = dict(np.load(runs / "world1_rank0.npz"))
    assert len(reference["losses"]) == STEPS
    np.testing.assert_allclose(info["losses"], reference["losses"], rtol=1e-5)
    moved = 0
    for name in single:
        np.testing.assert_allclose(parallel[name], single[name], rtol=1e-4, atol=2e-6, err_msg=name)
        moved += 1
    assert moved == len(start)
