"""What threads may do at once (mindformers.utils: EXECUTION_LOCK, GRAPHS): every MindSpore call takes
turns (eager passes, compiles and compiled steps of any model), and generate() in several threads on one
model or on two models gives each call what it gives alone."""
import sys
import threading

import numpy as np
import pytest

from mindformers.utils import EXECUTION_LOCK, GRAPHS, SharedExclusiveLock, release_graphs
from tests.serving.conftest import tiny_model


def test_shared_exclusive_lock():
    lock = SharedExclusiveLock()
    with lock.shared(), lock.shared():  # many shared holders
        with lock.exclusive(blocking=False) as held:
            assert held is False
    order = []
    entered = threading.Event()

    def writer():
        with lock.exclusive():
            order.append("exclusive")

    def late_reader():
        with lock.shared():
            order.append("late shared")

    with lock.shared():
        t_writer = threading.Thread(target=writer)
        t_writer.start()
        while not lock._waiting:  # the writer waits for the shared holder
            pass
        t_reader = threading.Thread(target=late_reader)
        t_reader.start()
        entered.wait(0.2)
        assert order == []  # neither runs while shared is held; the reader queues behind the writer
    t_writer.join(5), t_reader.join(5)
    assert order == ["exclusive", "late shared"]


@pytest.fixture(scope="module")
def models():
    return tiny_model(0), tiny_model(1)


PROMPTS = [[1, 530, 2018, 314], [1, 22, 4]]


def test_compiled_steps_take_turns_with_other_calls(models):
    """A compiled step holds EXECUTION_LOCK: while another thread makes a MindSpore call (holds the lock) a
    decode waits, and goes on when the call ends; a compile also waits for a running graph."""
    model = models[0]
    expected = model.generate(PROMPTS, max_new_tokens=5)  # compiles this shape's graphs
    results = {}

    def decode(name, **settings):
        results[name] = model.generate(PROMPTS, **settings)

    with EXECUTION_LOCK:  # another thread's eager pass or graph run
        compiled = threading.Thread(target=decode, args=("after the call",), kwargs={"max_new_tokens": 5})
        compiled.start()
        compiled.join(1.0)
        assert compiled.is_alive() and not results  # its compiled steps wait
    compiled.join(60)
    assert not compiled.is_alive() and np.array_equal(results["after the call"], expected)
    with GRAPHS.shared():  # a graph running (its caller would hold EXECUTION_LOCK too; a finalizer may not)
        new_shape = threading.Thread(target=decode, args=("new",), kwargs={"max_new_tokens": 200})  # a new cache
        new_shape.start()
        new_shape.join(1.0)
        assert new_shape.is_alive()  # its compile waits for the running graph
    new_shape.join(120)
    assert not new_shape.is_alive() and np.array_equal(results["new"][:, :expected.shape[1]], expected)


def test_generate_in_threads_equals_alone(models):
    """Several threads on one model (two with the same batch size: the second gets a cache of its own while
    the first holds it) and on two models, with different batch sizes (different graphs): every call returns
    what it returns alone. Python switches threads every microsecond here, so a graph call not holding
    EXECUTION_LOCK runs another thread's graph (MindSpore 2.10 keeps the phase to run process-wide): this test
    fails without it."""
    cases = [(0, PROMPTS, 4), (0, PROMPTS, 7), (0, PROMPTS[:1], 7), (1, PROMPTS[:1], 4), (1, PROMPTS, 7)]
    alone = {(m, len(prompts), n): models[m].generate(prompts, max_new_tokens=n) for m, prompts, n in cases}
    results, errors = {}, []

    def run(m, prompts, n, repeat):
        try:
            for r in range(repeat):
                results[(m, len(prompts), n, r)] = models[m].generate(prompts, max_new_tokens=n)
        except Exception as err:  # reported below
            errors.append(err)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=run, args=(*case, 3)) for case in cases]
        [t.start() for t in threads]
        [t.join(300) for t in threads]
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors
    assert len(results) == 3 * len(cases)
    for key, out in results.items():
        np.testing.assert_array_equal(out, alone[key[:3]], err_msg=str(key))


def test_release_never_waits():
    """Freeing graphs from a thread running a graph (a finalizer may do it) is deferred, not a deadlock."""
    done = threading.Event()

    def release_while_running():
        with GRAPHS.shared():
            release_graphs({"no-such-phase"})
        done.set()

    t = threading.Thread(target=release_while_running)
    t.start()
    t.join(5)
    assert done.is_set()
    with EXECUTION_LOCK:  # and with the lock held elsewhere
        t = threading.Thread(target=release_graphs, args=({"another-phase"},))
        t.start()
        t.join(5)
        assert not t.is_alive()
