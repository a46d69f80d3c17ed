"""DoRA and IA3 adapters in the multi-adapter engine (``scaled_adapters``): the layer's row scales against
numpy, the engine's greedy ids against ``generate`` with the adapter applied by our tuners (alone and mixed
with LoRA and base rows in one batch), refusal without the flag, a slot reset by unload, and PEFT 0.21's IA3
logits (tests/fixtures/interop)."""
import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from mindformers import AutoModel
from mindformers.kernels import host
from mindformers.models.common.layers import Conv1D, Linear
from mindformers.serving import Engine, RuntimeConfigBuilder, ServingError, StatusCode
from mindformers.serving.lora import AdapterPool, MultiLoraLinear, attach_pool, read_adapter_dir
from mindformers.tuners import IA3Config, LoraConfig, PeftModel, get_peft_model
from mindformers.utils import write_parameter

from tests.conftest import FIXTURES, INTEROP, ids_tensor
from tests.serving.conftest import tiny_model
from tests.serving.test_engine import read_all, strip_pad

KERNELS = ["gather"] + (["host"] if host.enabled() else [])
IN, OUT, RANK = 6, 5, 3


# ---------------------------------------------------------------------------------------------- the layer
def layers():
    """path -> base layer with random weights: a Linear with a bias, one without, and GPT-2's Conv1D."""
    rng = np.random.default_rng(0)
    out = {"biased": Linear(IN, OUT, bias=True), "plain": Linear(IN, OUT, bias=False), "conv": Conv1D(IN, OUT)}
    for cell in out.values():
        write_parameter(cell.weight, rng.normal(size=cell.weight.shape).astype(np.float32))
        if cell.bias is not None:
            write_parameter(cell.bias, rng.normal(size=cell.bias.shape).astype(np.float32))
    return out


def weight_out_in(cell):
    w = cell.weight.asnumpy().astype(np.float64)
    return w.T if isinstance(cell, Conv1D) else w


def bias_of(cell):
    return np.zeros(OUT) if cell.bias is None else cell.bias.asnumpy().astype(np.float64)


@pytest.mark.parametrize("kernel", KERNELS)
def test_layer_row_scales_match_numpy(kernel):
    """Slots 0..3 hold LoRA, DoRA, IA3 on the output, IA3 on the input; each row gets its slot's formula,
    base and LoRA rows the unscaled layer's output bit for bit; an unloaded slot is the base layer again."""
    rng = np.random.default_rng(1)
    bases = layers()
    pool = AdapterPool({p: (IN, OUT) for p in bases}, max_num=4, max_rank=4, max_rows=8, kernel=kernel, scaled=True)
    plain = AdapterPool({p: (IN, OUT) for p in bases}, max_num=4, max_rank=4, max_rows=8, kernel=kernel)
    cells = {p: MultiLoraLinear(c, pool, p) for p, c in bases.items()}
    unscaled = {p: MultiLoraLinear(c, plain, p) for p, c in bases.items()}
    assert set(pool.shift) == {"biased", "conv"}  # a bias correction only where there is a bias
    lora = {p: (rng.normal(size=(RANK, IN)), rng.normal(size=(OUT, RANK)), 0.7) for p in bases}
    dora = {p: (rng.normal(size=(RANK, IN)), rng.normal(size=(OUT, RANK)), 1.3, rng.uniform(0.5, 2, OUT))
            for p in bases}
    l_out = {p: rng.uniform(0.5, 1.5, OUT) for p in bases}
    l_in = {p: rng.uniform(0.5, 1.5, IN) for p in bases}

    def slot_tensors(factors):
        pad = ((0, 1), (0, 0))  # max_rank 4 > RANK
        return {p: (np.pad(a, pad).astype(np.float32), np.pad(s * b.T, pad).astype(np.float32))
                for p, (a, b, s, *_) in factors.items()}

    for target in (pool, plain):
        target._write(0, slot_tensors(lora), dict.fromkeys(bases, RANK))
    gains = {p: pool.dora_scales(p, a, b, s, m) for p, (a, b, s, m) in dora.items()}
    pool._write(1, slot_tensors(dora), dict.fromkeys(bases, RANK),
                {"out": {p: g for p, (g, _) in gains.items()},
                 "shift": {p: c for p, (_, c) in gains.items() if c is not None}})
    pool._write(2, {}, {}, {"out": l_out})
    pool._write(3, {}, {}, {"in": l_in})
    row_slots = [-1, 0, 1, 2, 3, 1, -1]
    pool.bind_rows(row_slots)
    plain.bind_rows(row_slots)
    x = rng.normal(size=(7, 3, IN)).astype(np.float32)  # [rows, seq, in]
    for path, base in bases.items():
        w, b = weight_out_in(base), bias_of(base)
        xd = x.astype(np.float64)
        a, bb, s = lora[path]
        da, db, ds, m = dora[path]
        g = m / np.linalg.norm(w + ds * db @ da, axis=1)
        want = {-1: xd @ w.T + b, 0: xd @ w.T + b + s * xd @ a.T @ bb.T,
                1: g * (xd @ w.T + ds * xd @ da.T @ db.T) + b,  # DoRA: the bias is not scaled
                2: l_out[path] * (xd @ w.T + b),  # IA3 on the output: the bias is scaled
                3: (xd * l_in[path]) @ w.T + b}  # IA3 on a feed-forward layer: the input
        for step in (cells[path], ms.jit(cells[path].construct)):
            got = step(Tensor(x)).asnumpy()
            for row, slot in enumerate(row_slots):
                np.testing.assert_allclose(got[row], want[slot][row], rtol=1e-5, atol=1e-5, err_msg=f"{path} {slot}")
            reference = unscaled[path](Tensor(x)).asnumpy()
            for row in (0, 1, 6):  # base and LoRA rows: the unscaled layer's numbers exactly
                np.testing.assert_array_equal(got[row], reference[row])
    for slot in (1, 2, 3):  # unloaded (ranks 0, identity scales): base rows again
        pool._write(slot, {}, {})
    for path, cell in cells.items():
        got, alone = cell(Tensor(x)).asnumpy(), bases[path](Tensor(x)).asnumpy()
        np.testing.assert_array_equal(got[[0, 2, 3, 4, 5, 6]], alone[[0, 2, 3, 4, 5, 6]])
        np.testing.assert_array_equal(pool.out_scale[path].asnumpy(), 1)
        np.testing.assert_array_equal(pool.in_scale[path].asnumpy(), 1)
        if path in pool.shift:
            np.testing.assert_array_equal(pool.shift[path].asnumpy(), 0)
    assert pool.scaled_paths == {0: set(), 1: set(), 2: set(), 3: set()}


# ------------------------------------------------------------------------- PEFT 0.21's DoRA and IA3 files
@pytest.mark.parametrize("kernel", KERNELS)
def test_peft_dora_and_ia3_in_one_batch_give_peft_logits_and_ids(kernel):
    """PEFT's DoRA (tests/fixtures/peft/dora) and IA3 (interop) adapters on the interop Llama, in one pool:
    a batch whose row 0 runs DoRA and row 1 IA3 gives PEFT's logits of each; IA3 rows give PEFT's greedy ids
    (KV cache) through ``generate``."""
    model = AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base"))
    pool = attach_pool(model, None, max_num=2, max_rank=4, max_rows=2, kernel=kernel, scaled=True)
    dora = pool.prepare(os.path.join(FIXTURES, "peft", "dora"))
    ia3 = pool.prepare(os.path.join(INTEROP, "llama", "adapters", "ia3"))
    assert (dora.kind, dora.rank, ia3.kind, ia3.rank, ia3.modules) == ("DORA", 4, "IA3", 0, 9)
    pool.install("dora", dora, 0)
    pool.install("ia3", ia3, 1)
    ids = ids_tensor(np.load(os.path.join(INTEROP, "llama", "input_ids.npy")))
    want_dora = np.load(os.path.join(FIXTURES, "peft", "dora", "reference.npz"))["logits"]
    want_ia3 = np.load(os.path.join(INTEROP, "llama", "logits_ia3.npy"))
    pool.bind_rows([0, 1])
    got = model(ids).asnumpy()
    np.testing.assert_allclose(got[0], want_dora[0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(got[1], want_ia3[1], atol=1e-4, rtol=0)
    pool.bind_rows([1, -1])
    got = model(ids).asnumpy()
    np.testing.assert_allclose(got[0], want_ia3[0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(got[1], np.load(os.path.join(INTEROP, "llama", "logits_base.npy"))[1], atol=1e-4, rtol=0)
    model.generation_mode = "pynative"
    pool.bind_rows([1, 1])
    greedy = np.load(os.path.join(FIXTURES, "peft_methods", "generate_ia3.npy"))  # PEFT's, 8 new tokens
    np.testing.assert_array_equal(np.asarray(model.generate(ids, max_new_tokens=8, do_sample=False)), greedy)


# ---------------------------------------------------------------------------------------------- the engine
SETTINGS = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False}
PROMPTS = {"dora": "Tell me about robots", "ia3": "Why is the sky blue?", "qv-4": "Hello there",
           None: "Do you like books?"}


@pytest.fixture(scope="module")
def scaled_dirs(tmp_path_factory):
    """A DoRA adapter (random A, B; magnitudes moved off ||W + s B A||) and an IA3 one (vectors in [0, 3),
    with a feed-forward target), saved by our tuners in PEFT's files."""
    root = tmp_path_factory.mktemp("scaled")
    rng = np.random.default_rng(0)
    dora = get_peft_model(tiny_model(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj",
                                                                                    "down_proj"],
                                                   use_dora=True, init_lora_weights=False), seed=21)
    ia3 = get_peft_model(tiny_model(), IA3Config(target_modules=["k_proj", "v_proj", "up_proj", "down_proj"],
                                                 feedforward_modules=["down_proj"]), seed=22)
    for model, slot, change in ((dora, "lora_magnitude_vector", lambda v: v * rng.uniform(0.5, 1.5, v.shape)),
                                (ia3, "ia3_l", lambda v: v * rng.uniform(0.0, 3.0, v.shape))):
        moved = [param for name, param in model.parameters_and_names() if slot in name]
        assert moved
        for param in moved:
            write_parameter(param, change(param.asnumpy()).astype(np.float32))
    dirs = {"dora": str(root / "dora"), "ia3": str(root / "ia3")}
    dora.save_pretrained(dirs["dora"])
    ia3.save_pretrained(dirs["ia3"])
    return dirs


@pytest.fixture(scope="module")
def scaled_reference(tokenizer, adapter_dirs, scaled_dirs):
    """``run(prompt, adapter, **settings)``: generate() alone with the adapter applied by our tuners."""
    lora = PeftModel.from_pretrained(tiny_model(), scaled_dirs["dora"], adapter_name="dora")
    for name in ("qv-4", "all-8"):
        lora.load_adapter(adapter_dirs[name], name)
    ia3 = PeftModel.from_pretrained(tiny_model(), scaled_dirs["ia3"], adapter_name="ia3")
    for model in (lora, ia3):
        model.base_model.generation_mode = "pynative"

    def run(prompt, name, **settings):
        ids = tokenizer(prompt)["input_ids"]
        if name is None:
            with lora.disable_adapter():
                out = lora.generate(ids, **settings)
        else:
            model = ia3 if name == "ia3" else lora
            model.set_adapter(name)
            out = model.generate(ids, **settings)
        return strip_pad(out[0, len(ids):].tolist())

    return run


@pytest.fixture(scope="module", params=KERNELS)
def scaled_engine(request, model_dir, adapter_dirs, scaled_dirs):
    """A scaled engine with 3 slots holding DoRA, IA3 and a LoRA adapter (graphs compiled on first use)."""
    engine = Engine()
    engine.install_model(RuntimeConfigBuilder("tiny", model=model_dir).max_batch(4).max_length(64).lora_max_num(3)
                         .lora_max_rank(16).scaled_adapters(True).lora_kernel(request.param).warmup(False).build())
    engine.start_model("tiny")
    for name in ("dora", "ia3"):
        engine.load_lora("tiny", name, scaled_dirs[name])
    engine.load_lora("tiny", "qv-4", adapter_dirs["qv-4"])
    yield engine
    engine.uninstall_model("tiny")


def test_engine_serves_dora_and_ia3_alone_and_mixed(scaled_engine, scaled_reference, monkeypatch):
    engine, pool = scaled_engine, scaled_engine._models["tiny"].pool
    info = engine.loras("tiny")
    assert (info["dora"]["kind"], info["ia3"]["kind"], info["ia3"]["rank"], info["ia3"]["modules"]) == \
        ("DORA", "IA3", 0, 8)
    expected = {name: scaled_reference(prompt, name, **SETTINGS) for name, prompt in PROMPTS.items()}
    for name in ("dora", "ia3"):  # alone
        status, ids = engine.sync_request("tiny", PROMPTS[name], {**SETTINGS, "lora_name": name})
        assert status.ok and ids == expected[name], name
        assert ids != scaled_reference(PROMPTS[name], None, **SETTINGS)  # the adapter changes the answer
    steps = []
    bind = pool.bind_rows
    monkeypatch.setattr(pool, "bind_rows", lambda rows: (steps.append(list(rows)), bind(rows)))
    started = [(name, engine.start_request_text("tiny", prompt, {**SETTINGS, "lora_name": name}))
               for name, prompt in PROMPTS.items()]
    for name, (status, handle, queue) in started:  # together: DoRA, IA3, LoRA and base rows
        assert status.ok
        assert read_all(queue) == expected[name], name
        engine.release_request("tiny", handle)
    assert any(sorted(step) == sorted([-1] + [pool.slots[n] for n in ("dora", "ia3", "qv-4")]) for step in steps)


def test_unload_and_eviction_reset_a_slot(scaled_engine, scaled_reference, scaled_dirs, adapter_dirs):
    """IA3's slot, unloaded, takes a LoRA adapter that then gives its own ids; adapters swapped in and out
    of a full pool (scaled and not) keep giving theirs."""
    engine, pool = scaled_engine, scaled_engine._models["tiny"].pool
    slot = pool.slots["ia3"]
    engine.unload_lora("tiny", "ia3")
    engine.load_lora("tiny", "all-8", adapter_dirs["all-8"])
    assert pool.slots["all-8"] == slot
    for path in pool.layers:
        np.testing.assert_array_equal(pool.out_scale[path].asnumpy()[slot + 1], 1)
        np.testing.assert_array_equal(pool.in_scale[path].asnumpy()[slot + 1], 1)
    engine.register_lora("tiny", "ia3", scaled_dirs["ia3"])  # 4 adapters, 3 slots: each request may evict
    for name in ("all-8", "ia3", "qv-4", "dora", "all-8", "ia3"):
        status, ids = engine.sync_request("tiny", PROMPTS["dora"], {**SETTINGS, "lora_name": name})
        assert status.ok and ids == scaled_reference(PROMPTS["dora"], name, **SETTINGS), name
    adapters = engine.metrics("tiny")["adapters"]
    assert sum(adapters[name]["evictions"] for name in ("all-8", "ia3", "qv-4", "dora")) >= 3


def test_dora_and_ia3_are_refused_without_scaled_adapters(model_dir, scaled_dirs):
    engine = Engine()
    engine.install_model(RuntimeConfigBuilder("plain", model=model_dir).max_length(64).lora_max_rank(8)
                         .warmup(False).build())
    try:
        for name in ("dora", "ia3"):
            with pytest.raises(ServingError) as info:
                engine.register_lora("plain", name, scaled_dirs[name])
            assert info.value.code is StatusCode.INVALID_REQUEST and "scaled_adapters" in info.value.message
        assert not engine._models["plain"].pool.out_scale  # a LoRA-only pool holds no scales
    finally:
        engine.uninstall_model("plain")


def test_scaled_pools_still_refuse_bias_and_modules_to_save():
    for folder, words in (("bias_all", "LORA with bias"), ("modules_to_save", "LORA with modules_to_save")):
        with pytest.raises(ServingError, match=words):
            read_adapter_dir(os.path.join(FIXTURES, "peft", folder), {}, max_rank=8, scaled=True)
