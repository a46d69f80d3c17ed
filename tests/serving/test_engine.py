"""The multi-LoRA engine against the tuner API: every request of a mixed, continuously batched run gives
the ids ``generate`` gives for it alone with its adapter applied through PeftModel / Swift."""
import os
import threading

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mindformers.kernels import host
from mindformers.serving import Engine, GenerateStatus, RuntimeConfigBuilder, ServingError, StatusCode
from mindformers.tuners import LoraConfig, PeftModel, Swift, get_peft_model

from tests.serving.conftest import ADAPTERS, tiny_model

PROMPTS = ["Hello there", "What is your name? I would like to know it before we go on.", "Robots",
           "Tell me a joke about cats and dogs, please, a long one with a twist", "Hi", "Why is the sky blue?",
           "Do you like books?", "I am a student of computer science and I want to learn about compilers today",
           "ok", "What time is it in Tokyo when it is noon in Paris?", "Sing", "Who are you?"]
RUNNING = (GenerateStatus.Init, GenerateStatus.ContextFinished, GenerateStatus.Generating)


def read_all(queue):
    """The issue's reading loop: Get() while the status says more may come."""
    tokens = []
    while queue.GenerateStatus() in RUNNING:
        new = queue.Get(timeout=120)
        tokens += new or []
    return tokens


@pytest.fixture(scope="module", params=["gather"] + (["host"] if host.enabled() else []))
def engine(request, model_dir, adapter_dirs):
    """The engine with each multi-LoRA kernel: the host kernel (CPU) and the MindSpore-ops one (GPU/Ascend).
    The first one compiles its graphs at start (warmup); the other compiles them on first use."""
    engine = Engine()
    config = (RuntimeConfigBuilder("tiny", model=model_dir).max_batch(4).max_length(96).lora_max_num(8)
              .lora_max_rank(16).max_queue(32).lora_kernel(request.param)
              .warmup(request.param == "gather").build())
    engine.install_model(config)
    engine.start_model("tiny")
    for name, path in adapter_dirs.items():
        engine.load_lora("tiny", name, path)
    yield engine
    engine.uninstall_model("tiny")


@pytest.fixture(scope="module")
def reference(tokenizer, adapter_dirs):
    """``reference(prompt, lora, **settings)``: the request run alone through ``generate`` with its adapter
    applied by the tuner API (PEFT's or SWIFT's, after the file format), eagerly (no graphs to compile);
    each answer kept for the other kernel's engine."""
    peft = PeftModel.from_pretrained(tiny_model(), adapter_dirs["qv-4"], adapter_name="qv-4")
    for name, (_, _, kind) in ADAPTERS.items():
        if kind == "peft" and name != "qv-4":
            peft.load_adapter(adapter_dirs[name], name)
    swift = Swift.from_pretrained(tiny_model(), os.path.dirname(adapter_dirs["swift-4"]))
    for model in (peft, swift):
        model.base_model.generation_mode = "pynative"

    answers = {}

    def run(prompt, lora, **settings):
        key = (prompt, lora, repr(sorted(settings.items())))
        if key not in answers:
            answers[key] = generate(prompt, lora, **settings)
        return answers[key]

    def generate(prompt, lora, **settings):
        ids = tokenizer(prompt)["input_ids"]
        if lora is None:
            with peft.disable_adapter():
                out = peft.generate(ids, **settings)
        elif ADAPTERS[lora][2] == "swift":
            swift.set_active_adapters(lora)
            out = swift.generate(ids, **settings)
        else:
            peft.set_adapter(lora)
            out = peft.generate(ids, **settings)
        return out[0, len(ids):].tolist()

    return run


def strip_pad(ids, eos=2):
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def test_mixed_batch_equals_each_request_alone(engine, reference, monkeypatch):
    pool = engine._models["tiny"].pool
    groups_seen = []
    bind = pool.bind_rows
    monkeypatch.setattr(pool, "bind_rows", lambda rows: (groups_seen.append(list(rows)), bind(rows)))
    names = [None] + list(ADAPTERS)
    decode_before = engine.metrics("tiny")["decode"]
    requests = []
    for i, prompt in enumerate(PROMPTS):  # 12 requests on 4 rows: they join and leave between steps
        settings = {"max_new_tokens": 6 + 3 * (i % 4), "do_sample": False}
        if i == 5:
            settings.update(top_k=1, repetition_penalty=1.1)
        if i == 9:
            settings.update(do_sample=True, seed=7, top_p=0.9, temperature=0.8)
        lora = names[i % len(names)]
        status, handle, queue = engine.start_request_text("tiny", prompt, {**settings, "lora_name": lora})
        assert status.ok, status.message
        requests.append((prompt, lora, settings, handle, queue))
    generated = 0
    for prompt, lora, settings, handle, queue in requests:
        got = read_all(queue)
        generated += len(got)
        assert queue.GenerateStatus() is GenerateStatus.GenerateFinished
        assert queue.finish_reason in ("stop", "length")
        assert got == queue.output_ids
        expected = strip_pad(reference(prompt, lora, **settings))
        assert got == expected, (prompt, lora)
        assert engine.release_request("tiny", handle).ok
    decode_groups = [g for g in groups_seen if len(g) > 1]
    assert max(len({s for s in g if s >= 0}) for g in decode_groups) >= 3  # one step served 3+ adapters
    assert any(-1 in g and any(s >= 0 for s in g) for g in decode_groups)  # base rows beside adapter rows
    metrics = engine.metrics("tiny")
    assert metrics["adapters"]["base"]["requests"] >= 2
    assert metrics["running"] == 0 and metrics["waiting"] == 0
    # every token after a request's first (its prefill's) came from a decode step, which the log has
    steps = metrics["decode"]["steps"] - decode_before["steps"]
    assert metrics["decode"]["tokens"] - decode_before["tokens"] == generated - len(PROMPTS)
    log = engine.decode_steps("tiny")[-steps:]
    assert len(log) == steps and sum(rows for rows, _, _ in log) == generated - len(PROMPTS)
    assert max(rows for rows, _, _ in log) == 4 and all(0 <= lora_rows <= rows for rows, lora_rows, _ in log)
    assert any(0 < lora_rows < rows for rows, lora_rows, _ in log)  # adapter rows beside base rows, counted
    assert all(seconds > 0 for _, _, seconds in log)
    seconds = metrics["decode"]["seconds"] - decode_before["seconds"]
    assert sum(step_seconds for _, _, step_seconds in log) == pytest.approx(seconds)


def test_stop_strings_end_the_request_as_in_generate(engine, reference, tokenizer):
    prompt, lora = "Tell me a joke about cats and dogs", "all-8"
    settings = {"max_new_tokens": 24, "min_new_tokens": 24}  # no end-of-sequence: only the stop string ends it
    status, free = engine.sync_request("tiny", prompt, {**settings, "lora_name": lora})
    assert status.ok and len(free) == 24
    stop = tokenizer.decode(free[:10])[-3:]  # ends with the 10th new token's text (or earlier, if it repeats)
    status, handle, queue = engine.start_request_text("tiny", prompt, {**settings, "lora_name": lora,
                                                                       "stop_strings": [stop, "never there"]})
    assert status.ok
    got = read_all(queue)
    assert queue.finish_reason == "stop" and len(got) <= 10 and got == free[:len(got)]
    assert stop in tokenizer.decode(got) and stop not in tokenizer.decode(got[:-1])
    assert got == reference(prompt, lora, **settings, stop_strings=[stop, "never there"], tokenizer=tokenizer)
    assert engine.release_request("tiny", handle).ok


def test_adapters_change_outputs(engine):
    outputs = {}
    for lora in [None] + list(ADAPTERS):
        status, ids = engine.sync_request("tiny", "Tell me about robots", {"max_new_tokens": 8, "lora_name": lora,
                                                                          "min_new_tokens": 8})
        assert status.ok
        outputs[lora] = tuple(ids)
    assert len(set(outputs.values())) == len(outputs)  # random adapters: every answer differs


def test_release_interrupts_and_keeps_tokens(engine):
    status, handle, queue = engine.start_request_text("tiny", "Count with me", {"max_new_tokens": 80,
                                                                                 "min_new_tokens": 80})
    assert status.ok
    first = queue.Get(timeout=120)
    assert first and queue.GenerateStatus() in RUNNING
    assert engine.release_request("tiny", handle).ok
    rest = []
    while True:
        new = queue.Get(timeout=120)
        if new is None:
            break
        rest += new
    assert queue.GenerateStatus() is GenerateStatus.GenerateInterrupted
    assert queue.finish_reason == "interrupted"
    assert queue.output_ids == first + rest and 1 <= len(queue.output_ids) < 80
    assert not engine.release_request("tiny", handle).ok  # already forgotten


def test_bad_requests_are_refused_with_a_reason(engine):
    cases = [
        (("nope", [1, 2], {}), StatusCode.UNKNOWN_MODEL, "installed"),
        (("tiny", [1, 2], {"lora_name": "nope"}), StatusCode.UNKNOWN_ADAPTER, "loaded"),
        (("tiny", [1, 2], {"max_new_token": 3}), StatusCode.INVALID_REQUEST, "max_new_token"),
        (("tiny", [1, 2], {"num_beams": 2}), StatusCode.INVALID_REQUEST, "num_beams"),
        (("tiny", [1, 2], {"top_p": 1.5}), StatusCode.INVALID_REQUEST, "top_p"),
        (("tiny", [], {}), StatusCode.INVALID_REQUEST, "empty"),
        (("tiny", [1, 10 ** 6], {}), StatusCode.INVALID_REQUEST, "vocabulary"),
        (("tiny", [1] * 96, {}), StatusCode.INVALID_REQUEST, "max_length"),
        (("tiny", [1] * 10, {"max_new_tokens": 90}), StatusCode.INVALID_REQUEST,
         "would reach 100 tokens, beyond the serving limit of 96 (max_length"),
        (("tiny", [1] * 10, {"stop_strings": [""]}), StatusCode.INVALID_REQUEST, "stop_strings must be"),
        (("tiny", "text", {}), StatusCode.INVALID_REQUEST, "integers"),
    ]
    for args, code, words in cases:
        status, handle, queue = engine.start_request_ids(*args)
        assert status.code is code and words in status.message, (args, status)
        assert handle is None and queue is None


def test_float16_pool_serves_the_factors_rounded_to_float16(model_dir, adapter_dirs, tokenizer, tmp_path):
    """``lora_dtype("float16")``: half the pool's bytes, and each request gets the ids ``generate`` gives with
    the adapter's factors rounded to float16 (alpha / r = 2 scales B exactly); factors float16 cannot hold are
    refused with the option to use."""
    rounded = tmp_path / "all-8-fp16"
    rounded.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        data = open(os.path.join(adapter_dirs["all-8"], name), "rb").read()
        (rounded / name).write_bytes(data)
    tensors = load_file(str(rounded / "adapter_model.safetensors"))
    save_file({k: v.astype(np.float16).astype(np.float32) for k, v in tensors.items()},
              str(rounded / "adapter_model.safetensors"))
    peft = PeftModel.from_pretrained(tiny_model(), str(rounded))
    peft.base_model.generation_mode = "pynative"

    engine = Engine()
    engine.install_model(RuntimeConfigBuilder("half", model=model_dir).max_batch(2).max_length(64).lora_max_num(2)
                         .lora_max_rank(8).lora_dtype("float16").warmup(False).build())
    engine.start_model("half")
    try:
        engine.load_lora("half", "all-8", adapter_dirs["all-8"])
        # 2 bytes x rank 8 x 2 layers x (in + out) of their 7 linear layers (q 64+64, k 64+32, v 64+32, o 64+64,
        # gate 64+128, up 64+128, down 128+64)
        assert engine.loras("half")["all-8"]["slot_bytes"] == 2 * 8 * 2 * 1024
        for prompt in ("Tell me about robots", "Hi"):
            ids = tokenizer(prompt)["input_ids"]
            status, got = engine.sync_request("half", ids, {"max_new_tokens": 8, "min_new_tokens": 8,
                                                            "lora_name": "all-8"})
            assert status.ok
            assert got == peft.generate(ids, max_new_tokens=8, min_new_tokens=8)[0, len(ids):].tolist()
        huge = tmp_path / "huge"
        config = LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
        get_peft_model(tiny_model(), config, seed=0).save_pretrained(str(huge))
        tensors = load_file(str(huge / "adapter_model.safetensors"))
        save_file({k: v * (1e6 if "lora_B" in k else 1) for k, v in tensors.items()},
                  str(huge / "adapter_model.safetensors"))
        with pytest.raises(ServingError) as info:
            engine.load_lora("half", "huge", str(huge))
        assert "float16" in info.value.message and "lora_dtype float32" in info.value.message
    finally:
        engine.uninstall_model("half")
    with pytest.raises(ServingError, match="lora_dtype must be one of float32, float16, found 'bfloat16'"):
        RuntimeConfigBuilder("x", model=model_dir).lora_dtype("bfloat16").build()


def test_adapter_loading_errors(engine, adapter_dirs, tmp_path):
    def refused(path, name="x"):
        with pytest.raises(ServingError) as info:
            engine.load_lora("tiny", name, path)
        return info.value

    assert refused(str(tmp_path / "missing")).code is StatusCode.INVALID_REQUEST
    assert "adapter folders" in refused(os.path.dirname(adapter_dirs["swift-4"])).message
    assert refused(adapter_dirs["qv-4"], name="qv-4").code is StatusCode.CONFLICT
    assert refused(adapter_dirs["qv-4"], name="base").code is StatusCode.INVALID_REQUEST
    # rank over the limit, DoRA, and a truncated weights file
    for kind, config in (("r32", LoraConfig(r=32, target_modules=["q_proj"], init_lora_weights=False)),
                         ("dora", LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))):
        get_peft_model(tiny_model(), config, seed=0).save_pretrained(str(tmp_path / kind))
    assert "lora_max_rank=16" in refused(str(tmp_path / "r32")).message
    assert "use_dora" in refused(str(tmp_path / "dora")).message
    broken = tmp_path / "broken"
    get_peft_model(tiny_model(), LoraConfig(r=4, target_modules=["q_proj"]), seed=0).save_pretrained(str(broken))
    data = (broken / "adapter_model.safetensors").read_bytes()
    (broken / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    assert "safetensors" in refused(str(broken)).message
    with pytest.raises(ServingError) as info:
        engine.unload_lora("tiny", "nope")
    assert info.value.code is StatusCode.UNKNOWN_ADAPTER
    # the pool is full (8 of 8) of idle adapters: a ninth takes the slot of one of them, which stays known
    # and is loaded again by the next request for it (test_engine_lru.py checks which one and the ids)
    ok_dir = tmp_path / "ok"
    get_peft_model(tiny_model(), LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False), seed=3).save_pretrained(str(ok_dir))
    engine.load_lora("tiny", "ninth", str(ok_dir))
    info = engine.loras("tiny")["ninth"]
    assert info["loaded"] and info["rank"] == 4 and info["weight_bytes"] < info["slot_bytes"]
    evicted = [name for name, info in engine.loras("tiny").items() if not info["loaded"]]
    assert len(evicted) == 1 and evicted[0] in ADAPTERS
    assert engine.sync_request("tiny", [1, 2, 3], {"max_new_tokens": 2, "lora_name": evicted[0]})[0].ok
    assert engine.loras("tiny")[evicted[0]]["loaded"]
    engine.unload_lora("tiny", "ninth")
    # an adapter in use cannot be unloaded; afterwards its slot takes the new one
    status, handle, queue = engine.start_request_ids("tiny", [1, 2, 3], {"max_new_tokens": 60, "lora_name": "o-8"})
    with pytest.raises(ServingError) as info:
        engine.unload_lora("tiny", "o-8")
    assert info.value.code is StatusCode.CONFLICT
    engine.release_request("tiny", handle)
    read_all(queue)
    for _ in range(100):  # the scheduler frees the row at its next step
        try:
            engine.unload_lora("tiny", "o-8")
            break
        except ServingError:
            threading.Event().wait(0.05)
    assert "o-8" not in engine.loras("tiny")
    assert engine.start_request_ids("tiny", [1], {"lora_name": "o-8"})[0].code is StatusCode.UNKNOWN_ADAPTER
    engine.load_lora("tiny", "o-8", adapter_dirs["o-8"])


def test_full_queue_and_stop(model_dir):
    engine = Engine()
    engine.install_model(RuntimeConfigBuilder("one", model=model_dir).max_batch(1).max_length(64).max_queue(1)
                         .lora_max_num(1).lora_max_rank(4).warmup(False).build())
    assert engine.start_request_ids("one", [1, 2], {})[0].code is StatusCode.NOT_RUNNING
    engine.start_model("one")
    settings = {"max_new_tokens": 40, "min_new_tokens": 40}
    results = [engine.start_request_ids("one", [1, 2, 3], settings) for _ in range(3)]
    codes = [status.code for status, _, _ in results]
    assert codes[:2] == [StatusCode.OK, StatusCode.OK] and codes[2] is StatusCode.QUEUE_FULL
    assert "max_queue=1" in results[2][0].message
    for status, handle, queue in results[:2]:  # nothing admitted is lost
        assert len(read_all(queue)) == 40 and queue.finish_reason == "length"
    status, handle, queue = engine.start_request_ids("one", [1, 2, 3], {"max_new_tokens": 60})
    queue.Get(timeout=120)
    engine.stop_model("one")
    assert queue.GenerateStatus() in RUNNING + (GenerateStatus.GenerateInterrupted,)
    read_all(queue)
    assert queue.GenerateStatus() is GenerateStatus.GenerateInterrupted and queue.output_ids
    assert engine.start_request_ids("one", [1, 2], {})[0].code is StatusCode.NOT_RUNNING
    engine.uninstall_model("one")
    assert engine.model_names() == []


def test_runtime_config_builder_checks_values(model_dir):
    config = (RuntimeConfigBuilder("m", model=model_dir).max_batch(2).max_length(32).lora_max_num(3)
              .lora_max_rank(8).lora_target_modules(["q_proj"]).max_queue(5).build())
    assert (config.max_batch, config.max_length, config.lora_max_num, config.lora_max_rank, config.max_queue) == \
        (2, 32, 3, 8, 5)
    with pytest.raises(ServingError, match="max_batch must be a positive integer, found 0"):
        RuntimeConfigBuilder("m", model=model_dir).max_batch(0).build()
    engine = Engine()
    with pytest.raises(ServingError, match="exceeds the model's context of 256"):
        engine.install_model(RuntimeConfigBuilder("m", model=model_dir).max_length(1000).build())
    with pytest.raises(ServingError, match="match no linear layer"):
        engine.install_model(RuntimeConfigBuilder("m", model=model_dir).max_length(64).lora_target_modules(["nope"])
                             .build())
    with pytest.raises(ServingError, match="cannot load model"):
        engine.install_model(RuntimeConfigBuilder("m", model=str(model_dir) + "-missing").build())


def test_base_only_steps_run_graphs_without_the_adapter_kernel(engine, reference, monkeypatch):
    """Decode steps with no adapter row use the base step (graphs compiled without the kernel); steps with
    adapters after them still apply the adapters, and base rows give generate()'s ids either way."""
    served = engine._models["tiny"]
    used = []
    for name in ("step", "base_step"):
        step = getattr(served, name)
        run = step.run
        monkeypatch.setattr(step, "run", lambda *a, _run=run, _name=name: (used.append(_name), _run(*a))[1])
    lora = next(iter(ADAPTERS))
    for settings in ({}, {"lora_name": lora}, {}):  # base alone, adapter alone, base again
        used.clear()
        status, ids = engine.sync_request("tiny", "Tell me about robots", {"max_new_tokens": 8, **settings})
        assert status.ok and ids == strip_pad(reference("Tell me about robots", settings.get("lora_name"),
                                                        max_new_tokens=8))
        assert used[0] == "step"  # the prefill
        assert set(used[1:]) == {"step" if settings else "base_step"}, used
    # the base graphs hold no adapter kernel: told that a row uses an adapter, they ignore it
    slot = served.pool.slots[lora]
    size, length = 1, served.cache_len
    args = (np.full((size, 1), 5, np.int64), np.ones((size, length), np.int32), np.zeros((size, 1), np.int32),
            np.full((size, 1), served.trash_slot, np.int32), np.arange(size, dtype=np.int32))
    with_adapter = served._run(*args, [slot])
    assert not np.allclose(with_adapter, served._run(*args, [-1]))
    np.testing.assert_array_equal(served._run(*args, [slot], base_graph=True), served._run(*args, [-1]))
