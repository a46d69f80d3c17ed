"""The rank watchdog (mindformers/parallel/watchdog.py) with plain Python processes as ranks (no MindSpore, so
each test takes about a second): a rank that dies or fails stops the others with a message naming it; a rank
that finishes does not. tests/trainer/test_faults.py runs it under msrun with real training."""
import os
import signal
import subprocess
import sys
import time

import pytest

WATCHDOG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "mindformers", "parallel", "watchdog.py")
# a rank: start the watchdog, say so, then do what stdin says ("die", "finish", "fail") or wait
RANK = r"""
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("watchdog", {path!r})  # by path: no MindSpore import
watchdog = importlib.util.module_from_spec(spec)
spec.loader.exec_module(watchdog)
dog = watchdog.RankWatchdog({directory!r}, {rank}, 2)
dog.start()
print(dog._monitor.pid, flush=True)
command = sys.stdin.readline().strip()
if command == "die":
    os._exit(3)
if command == "finish":
    dog.stop()
elif command == "fail":
    dog.stop(error="CheckpointWriteError: could not save checkpoint-4")
time.sleep(60)
"""


def start_ranks(directory):
    ranks = [subprocess.Popen([sys.executable, "-c", RANK.format(path=WATCHDOG, directory=str(directory), rank=r)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    monitors = [int(rank.stdout.readline()) for rank in ranks]
    time.sleep(0.5)  # each monitor has seen the other rank holding its lock (it looks every 0.1 s)
    return ranks, monitors


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie its parent has not reaped yet has)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # the state follows "(command name)"
    except (FileNotFoundError, ProcessLookupError):
        return True


def wait_until(condition, seconds: float) -> bool:
    """Whether ``condition()`` holds within ``seconds`` (looked at every 50 ms, and once more at the end)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture
def ranks(tmp_path):
    ranks, monitors = start_ranks(tmp_path / ".watchdog")
    yield ranks, monitors
    for process in ranks:
        if process.poll() is None:
            process.kill()
        process.communicate()


@pytest.mark.parametrize("how", ["killed", "crashed", "failed"])
def test_a_dead_or_failed_rank_stops_the_other_naming_it(ranks, how):
    (rank0, rank1), monitors = ranks
    started = time.monotonic()
    if how == "killed":
        os.kill(rank1.pid, signal.SIGKILL)
    else:
        rank1.stdin.write("die\n" if how == "crashed" else "fail\n")
        rank1.stdin.flush()
    rank0.wait(timeout=10)
    assert time.monotonic() - started < 5  # seen at once, 0.2 s for other ranks ending too, then SIGTERM
    assert rank0.returncode == -signal.SIGTERM
    message = rank0.stderr.read()
    if how == "failed":
        assert f"rank 1 (pid {rank1.pid}) failed: CheckpointWriteError: could not save checkpoint-4; " in message
    else:
        assert f"rank 1 (pid {rank1.pid}) died: its process ended during training (killed or crashed); " in message
    assert f"stopping rank 0 (pid {rank0.pid})" in message
    if how != "failed":  # the dead rank's own monitor says it in that rank's log
        rank1.wait(timeout=10)
        assert f"rank 1 (pid {rank1.pid}) ended during training without finishing" in rank1.stderr.read()
    assert wait_until(lambda: all(gone(pid) for pid in monitors), 2), "a monitor outlived its rank"


def test_a_finished_rank_does_not_stop_the_other(ranks):
    (rank0, rank1), monitors = ranks
    rank1.stdin.write("finish\n")
    rank1.stdin.flush()
    assert wait_until(lambda: gone(monitors[1]), 2)
    rank1.kill()  # after finishing, a rank's process may end any way it likes
    time.sleep(0.5)
    assert rank0.poll() is None and not gone(monitors[0])
    rank0.stdin.write("finish\n")
    rank0.stdin.flush()
    assert wait_until(lambda: gone(monitors[0]), 2)
    rank0.kill()
    assert "watchdog" not in rank0.stderr.read() + rank1.stderr.read()
