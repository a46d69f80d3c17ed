"""The engine's adapter cache: 8 known adapters, 3 pool slots. Requests for adapters that are not resident
wait while they are loaded (least recently used idle adapter evicted) and give the ids ``generate`` gives
for them alone; nothing is refused for a full pool."""
import concurrent.futures
import threading
import time

import pytest

from mindformers.serving import Engine, RuntimeConfigBuilder, ServingError, StatusCode

from tests.serving.conftest import ADAPTERS
# ``reference`` is test_engine.py's fixture (the request alone through generate() with its adapter applied)
from tests.serving.test_engine import PROMPTS, read_all, reference, strip_pad  # noqa: F401  # pylint: disable=unused-import

SLOTS = 3
LONG = {"max_new_tokens": 110, "min_new_tokens": 110}  # rows that keep running until released


@pytest.fixture(scope="module")
def engine(model_dir):
    engine = Engine()
    engine.install_model(RuntimeConfigBuilder("tiny", model=model_dir).max_batch(4).max_length(128)
                         .lora_max_num(SLOTS).lora_max_rank(16).max_queue(32).warmup(False).build())
    engine.start_model("tiny")
    yield engine
    engine.uninstall_model("tiny")


@pytest.fixture
def fresh(engine, adapter_dirs):
    """``fresh(names, loaded=())``: forget every adapter, then register ``names`` (name -> conftest adapter,
    or conftest names) and load ``loaded`` in that order."""
    def reset(names=(), loaded=()):
        deadline = time.monotonic() + 60
        while engine.metrics("tiny")["running"] or engine.metrics("tiny")["waiting"]:  # released rows end
            assert time.monotonic() < deadline, engine.metrics("tiny")
            time.sleep(0.02)
        for name in engine.loras("tiny"):
            engine.unload_lora("tiny", name)
        names = names if isinstance(names, dict) else {n: n for n in names}
        for name, source in names.items():
            if name in loaded:
                engine.load_lora("tiny", name, adapter_dirs[source])
            else:
                engine.register_lora("tiny", name, adapter_dirs[source])
    return reset


def resident(engine):
    return {name for name, info in engine.loras("tiny").items() if info["loaded"]}


KEYS = ("hits", "misses", "evictions", "loads")


def counts(engine, name, since=None):
    """{hits, misses, evictions, loads} of adapter ``name``, minus those of the ``since`` snapshot
    (``snapshot``): counters live as long as the engine, across tests."""
    entry = engine.metrics("tiny")["adapters"].get(name, dict.fromkeys(KEYS, 0))
    before = (since or {}).get(name, dict.fromkeys(KEYS, 0))
    return {k: entry[k] - before[k] for k in KEYS}


def snapshot(engine):
    return {name: {k: entry.get(k, 0) for k in KEYS} for name, entry in engine.metrics("tiny")["adapters"].items()}


def wait_tokens(queue, n, timeout=60):
    """Wait until ``queue`` holds at least ``n`` tokens (the scheduler appends them as it decodes)."""
    deadline = time.monotonic() + timeout
    while len(queue.output_ids) < n:
        assert time.monotonic() < deadline, f"{len(queue.output_ids)} tokens after {timeout} s, expected {n}"
        time.sleep(0.01)


def test_requests_across_all_adapters_equal_each_alone(engine, fresh, reference):
    fresh(list(ADAPTERS))  # 8 known, none resident
    before = snapshot(engine)
    names = [None] + list(ADAPTERS)
    requests = []
    for i, prompt in enumerate(PROMPTS + PROMPTS[:6]):  # 18 requests over 8 adapters and the base, 4 rows
        settings = {"max_new_tokens": 4 + 2 * (i % 3), "do_sample": False}
        lora = names[i % len(names)]
        status, handle, queue = engine.start_request_text("tiny", prompt, {**settings, "lora_name": lora})
        assert status.ok, status.message  # never refused for a full pool
        requests.append((prompt, lora, settings, handle, queue))
    for prompt, lora, settings, handle, queue in requests:
        got = read_all(queue)
        assert queue.finish_reason in ("stop", "length")
        assert got == strip_pad(reference(prompt, lora, **settings)), (prompt, lora)
        assert engine.release_request("tiny", handle).ok
    metrics = engine.metrics("tiny")
    adapters = [counts(engine, name, before) for name in ADAPTERS]
    assert all(a["misses"] >= 1 and a["loads"] >= 1 for a in adapters)
    assert sum(a["hits"] + a["misses"] for a in adapters) == 16  # every adapter request, counted once
    assert sum(a["loads"] for a in adapters) - sum(a["evictions"] for a in adapters) == SLOTS  # the pool is full
    assert metrics["pool"] == {"slots": SLOTS, "resident": SLOTS, "known": 8, "loading": 0}


def test_least_recently_used_idle_adapter_is_evicted(engine, fresh):
    fresh(["qv-4", "all-8", "down-2", "attn-16", "mlp-6", "o-8"], loaded=["qv-4", "all-8", "down-2"])
    before = snapshot(engine)
    slots = {name: info["slot"] for name, info in engine.loras("tiny").items() if info["loaded"]}
    assert sorted(slots.values()) == list(range(SLOTS))
    assert engine.sync_request("tiny", [1, 2, 3], {"max_new_tokens": 2, "lora_name": "qv-4"})[0].ok
    # used order, oldest first: all-8, down-2 (loaded), qv-4 (a request)
    assert engine.sync_request("tiny", [1, 2, 3], {"max_new_tokens": 2, "lora_name": "attn-16"})[0].ok
    info = engine.loras("tiny")
    assert resident(engine) == {"qv-4", "down-2", "attn-16"}
    assert info["attn-16"]["slot"] == slots["all-8"] and info["all-8"]["slot"] is None
    assert engine.sync_request("tiny", [1, 2, 3], {"max_new_tokens": 2, "lora_name": "mlp-6"})[0].ok
    assert resident(engine) == {"qv-4", "attn-16", "mlp-6"}
    # an explicit load with a full pool of idle adapters evicts the least recently used: qv-4
    engine.load_lora("tiny", "o-8", engine.loras("tiny")["o-8"]["path"])
    assert resident(engine) == {"attn-16", "mlp-6", "o-8"}
    assert engine.loras("tiny")["o-8"]["slot"] == slots["qv-4"]
    assert [counts(engine, n, before)["evictions"] for n in ("all-8", "down-2", "qv-4", "attn-16")] == [1, 1, 1, 0]


def test_request_waits_while_every_slot_is_busy(engine, fresh, reference, monkeypatch):
    fresh(["qv-4", "all-8", "down-2", "attn-16", "o-8"], loaded=["qv-4", "all-8", "down-2"])
    before = snapshot(engine)
    served = engine._models["tiny"]  # pylint: disable=protected-access
    slot_of_first = engine.loras("tiny")["qv-4"]["slot"]
    installs = []  # (adapter, slot, rows running then)
    install = served.pool.install
    monkeypatch.setattr(served.pool, "install", lambda name, prepared, slot: (
        installs.append((name, slot, len(served.running))), install(name, prepared, slot))[1])
    long = {}
    for name in ("qv-4", "all-8", "down-2"):  # three long rows hold the three slots (a fourth row is free)
        status, handle, queue = engine.start_request_ids("tiny", [1, 2, 3], {**LONG, "lora_name": name})
        assert status.ok
        long[name] = (handle, queue)
    for _, queue in long.values():
        wait_tokens(queue, 1)
    prompt, settings = PROMPTS[1], {"max_new_tokens": 6, "do_sample": False}
    status, handle, queue = engine.start_request_text("tiny", prompt, {**settings, "lora_name": "attn-16"})
    assert status.ok  # accepted: it waits for a slot
    deadline = time.monotonic() + 30  # once read, attn-16 reserves the least recently used adapter
    while served.victims != {"attn-16": "qv-4"}:
        assert time.monotonic() < deadline, served.victims
        time.sleep(0.01)
    # a request for qv-4 queued after attn-16's is held, so it cannot keep qv-4 busy: attn-16 gets qv-4's
    # slot as soon as the long qv-4 row ends
    status, later_handle, later = engine.start_request_text("tiny", PROMPTS[2], {**settings, "lora_name": "qv-4"})
    assert status.ok
    with pytest.raises(ServingError) as info:  # an explicit load finds no idle adapter to evict
        engine.load_lora("tiny", "o-8", engine.loras("tiny")["o-8"]["path"])
    assert info.value.code is StatusCode.CONFLICT and "every slot" in info.value.message
    progress = len(long["all-8"][1].output_ids)
    wait_tokens(long["all-8"][1], progress + 3)  # several steps later ...
    assert queue.output_ids == [] and later.output_ids == [] and not engine.loras("tiny")["attn-16"]["loaded"]
    assert engine.metrics("tiny")["waiting"] == 2 and engine.metrics("tiny")["running"] == 3
    engine.release_request("tiny", long["qv-4"][0])
    assert read_all(queue) == strip_pad(reference(prompt, "attn-16", **settings))
    assert read_all(later) == strip_pad(reference(PROMPTS[2], "qv-4", **settings))  # loaded again for it
    # attn-16 took qv-4's slot beside the two long rows still running; qv-4 came back into it once
    # attn-16's request had ended (the long rows hold the other two slots)
    assert installs == [("attn-16", slot_of_first, 2), ("qv-4", slot_of_first, 2)]
    assert counts(engine, "qv-4", before) == {"hits": 1, "misses": 1, "evictions": 1, "loads": 1}
    assert counts(engine, "attn-16", before) == {"hits": 0, "misses": 1, "evictions": 1, "loads": 1}
    for long_handle, _ in long.values():
        engine.release_request("tiny", long_handle)
    engine.release_request("tiny", handle)
    engine.release_request("tiny", later_handle)


def test_running_rows_decode_while_an_adapter_is_read(engine, fresh, reference, monkeypatch):
    fresh(["all-8", "mlp-6"], loaded=["all-8"])
    before = snapshot(engine)
    pool = engine._models["tiny"].pool  # pylint: disable=protected-access
    reading, go = threading.Event(), threading.Event()
    prepare = pool.prepare

    def slow_prepare(path):  # the loader thread blocks here until the test lets it go
        reading.set()
        assert go.wait(60)
        return prepare(path)

    monkeypatch.setattr(pool, "prepare", slow_prepare)
    status, long_handle, long_queue = engine.start_request_ids("tiny", [1, 2, 3], {**LONG, "lora_name": "all-8"})
    assert status.ok
    wait_tokens(long_queue, 1)
    settings = {"max_new_tokens": 5, "do_sample": False}
    status, handle, queue = engine.start_request_text("tiny", PROMPTS[0], {**settings, "lora_name": "mlp-6"})
    assert status.ok
    assert reading.wait(30)
    decoded = len(long_queue.output_ids)
    # queued behind the one waiting for its adapter: a base request and one of a resident adapter run now
    base = engine.sync_request("tiny", PROMPTS[3], settings)
    resident_answer = engine.sync_request("tiny", PROMPTS[4], {**settings, "lora_name": "all-8"})
    assert base[1] == strip_pad(reference(PROMPTS[3], None, **settings))
    assert resident_answer[1] == strip_pad(reference(PROMPTS[4], "all-8", **settings))
    wait_tokens(long_queue, decoded + 3)  # the running row kept decoding while the files were read
    assert not go.is_set() and queue.output_ids == [] and not engine.loras("tiny")["mlp-6"]["loaded"]
    assert engine.metrics("tiny")["pool"]["loading"] == 1
    go.set()
    assert read_all(queue) == strip_pad(reference(PROMPTS[0], "mlp-6", **settings))
    assert counts(engine, "mlp-6", before) == {"hits": 0, "misses": 1, "evictions": 0, "loads": 1}
    engine.release_request("tiny", handle)
    engine.release_request("tiny", long_handle)


def test_a_read_done_before_the_scheduler_waits_is_taken(engine, fresh, monkeypatch):
    """A read that ends before its callback is even attached (a fast disk) wakes no one: the scheduler,
    with nothing else to run, must take it before waiting (it once waited forever)."""
    fresh(["down-2"])
    served = engine._models["tiny"]  # pylint: disable=protected-access

    def read_at_once(fn, *args):
        future = concurrent.futures.Future()
        future.set_result(fn(*args))
        return future

    monkeypatch.setattr(served.loader, "submit", read_at_once)
    status, handle, queue = engine.start_request_ids("tiny", [1, 2, 3], {"max_new_tokens": 3, "lora_name": "down-2"})
    assert status.ok
    assert queue.Get(timeout=30), "no token in 30 s: the scheduler missed the adapter's read"
    read_all(queue)
    assert queue.finish_reason in ("stop", "length") and engine.loras("tiny")["down-2"]["loaded"]
    engine.release_request("tiny", handle)


def test_register_and_unload_adapters_that_are_not_resident(engine, fresh, adapter_dirs, tmp_path):
    fresh()
    engine.register_lora("tiny", "qv", adapter_dirs["qv-4"])
    info = engine.loras("tiny")["qv"]
    assert info["loaded"] is False and info["slot"] is None and info["rank"] == 4 and info["modules"] == 4
    assert info["path"] == adapter_dirs["qv-4"] and "load_seconds" not in info
    engine.register_lora("tiny", "qv", adapter_dirs["qv-4"])  # the same again: nothing happens
    with pytest.raises(ServingError) as err:
        engine.register_lora("tiny", "qv", adapter_dirs["o-8"])
    assert err.value.code is StatusCode.CONFLICT and adapter_dirs["qv-4"] in err.value.message
    with pytest.raises(ServingError) as err:
        engine.register_lora("tiny", "ghost", str(tmp_path / "missing"))
    assert err.value.code is StatusCode.INVALID_REQUEST and "does not exist" in err.value.message
    assert list(engine.loras("tiny")) == ["qv"] and engine.metrics("tiny")["pool"]["resident"] == 0
    engine.unload_lora("tiny", "qv")  # known, never loaded
    assert engine.loras("tiny") == {}
    assert engine.start_request_ids("tiny", [1], {"lora_name": "qv"})[0].code is StatusCode.UNKNOWN_ADAPTER
    with pytest.raises(ServingError) as err:
        engine.unload_lora("tiny", "qv")
    assert err.value.code is StatusCode.UNKNOWN_ADAPTER
    # an evicted adapter is forgotten too; its slot stays with the adapter that took it
    fresh(["qv-4", "all-8", "down-2", "o-8"], loaded=["qv-4", "all-8", "down-2", "o-8"])
    assert not engine.loras("tiny")["qv-4"]["loaded"]
    engine.unload_lora("tiny", "qv-4")
    assert set(engine.loras("tiny")) == {"all-8", "down-2", "o-8"} == resident(engine)


def test_hits_and_misses_of_a_scripted_sequence(engine, fresh):
    sources = ["qv-4", "all-8", "down-2", "o-8"]
    fresh({f"s{i}": source for i, source in enumerate(sources, start=1)})
    before = snapshot(engine)
    for name in ["s1", "s1", "s2", "s3", "s4", "s2", "s1", "s3", "s2"]:
        assert engine.sync_request("tiny", [1, 2, 3], {"max_new_tokens": 2, "lora_name": name})[0].ok
    # s4 evicts s1 (least recently used), s1 evicts s3, s3 evicts s4; s2 stays
    assert counts(engine, "s1", before) == {"hits": 1, "misses": 2, "evictions": 1, "loads": 2}
    assert counts(engine, "s2", before) == {"hits": 2, "misses": 1, "evictions": 0, "loads": 1}
    assert counts(engine, "s3", before) == {"hits": 0, "misses": 2, "evictions": 1, "loads": 2}
    assert counts(engine, "s4", before) == {"hits": 0, "misses": 1, "evictions": 1, "loads": 1}
    assert resident(engine) == {"s1", "s2", "s3"}
    metrics = engine.metrics("tiny")
    assert metrics["pool"] == {"slots": SLOTS, "resident": 3, "known": 4, "loading": 0}
    s4 = metrics["adapters"]["s4"]
    assert s4["load_seconds"] > 0 and s4["load_seconds_max"] <= s4["load_seconds"]
    assert engine.loras("tiny")["s1"]["load_seconds"] <= metrics["adapters"]["s1"]["load_seconds_max"]
