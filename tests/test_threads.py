"""What threads may do at once (mindformers.utils: EXECUTION_LOCK, GRAPHS): compiled steps of different
models or calls run side by side, compiles and eager passes take turns, and generate() in several threads on
one model gives each call what it gives alone."""
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


def test_compiled_steps_run_beside_a_running_graph(models):
    """A compiled step holds only GRAPHS.shared(): while another thread runs an eager pass (holds
    EXECUTION_LOCK) or a graph (holds GRAPHS.shared()), a thread decodes with already compiled graphs; a
    compile waits for the running graph."""
    model = models[0]
    expected = model.generate(PROMPTS, max_new_tokens=5)  # compiles this shape's graphs
    results = {}

    def decode(name, **settings):
        results[name] = model.generate(PROMPTS, **settings)

    with EXECUTION_LOCK:  # an eager pass in another thread does not stop compiled steps either
        compiled = threading.Thread(target=decode, args=("eager beside",), kwargs={"max_new_tokens": 5})
        compiled.start()
        compiled.join(60)
        assert not compiled.is_alive() and np.array_equal(results["eager beside"], expected)
    with GRAPHS.shared():
        compiled = threading.Thread(target=decode, args=("compiled",), kwargs={"max_new_tokens": 5})
        compiled.start()
        compiled.join(60)
        assert not compiled.is_alive() and np.array_equal(results["compiled"], expected)
        new_shape = threading.Thread(target=decode, args=("new",), kwargs={"max_new_tokens": 200})  # a new cache
        new_shape.start()
        new_shape.join(1.0)
        assert new_shape.is_alive()  # its compile waits for the running graph
    new_shape.join(120)
    assert not new_shape.is_alive() and np.array_equal(results["new"][:, :expected.shape[1]], expected)


def test_generate_in_threads_equals_alone(models):
    """Several threads on one model (same batch size: they would share a cache) and on two models: every
    call returns what it returns alone."""
    alone = {(m, n): models[m].generate(PROMPTS, max_new_tokens=n) for m in (0, 1) for n in (4, 7)}
    results, errors = {}, []

    def run(m, n, repeat):
        try:
            for r in range(repeat):
                results[(m, n, r)] = models[m].generate(PROMPTS, max_new_tokens=n)
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(m, n, 3)) for m in (0, 1) for n in (4, 7)]
    [t.start() for t in threads]
    [t.join(300) for t in threads]
    assert not errors, errors
    assert len(results) == 12
    for (m, n, r), out in results.items():
        np.testing.assert_array_equal(out, alone[(m, n)], err_msg=str((m, n, r)))


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
