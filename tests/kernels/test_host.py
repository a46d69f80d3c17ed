"""The host (CPU) kernels against MindSpore's generic ops and numpy: same updates, same norms, same training
run; and what a machine without a compiler gets."""
import ctypes
import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn

from mindformers.kernels import host
from mindformers.models.common.attention import cache_write_index, update_cache
from mindformers.trainer.optim import AdamW, global_norm

pytestmark = pytest.mark.skipif(not host.enabled(), reason="no C++ compiler: the host kernels are not built")


def test_squared_sum_matches_numpy_in_double():
    rng = np.random.default_rng(0)
    for shape in [(3,), (257, 129), (70001,), (1_000_003,), ()]:  # one part or seven, odd tails, 0-d
        x = np.asarray(rng.normal(size=shape) * 100, np.float32)
        got = ms.jit(host.squared_sum)(Tensor(x))
        assert got.shape == ()
        np.testing.assert_allclose(float(got.asnumpy()), float((x.astype(np.float64) ** 2).sum()), rtol=1e-6)
    tensors = [Tensor(rng.normal(size=s).astype(np.float32)) for s in [(5, 7), (300, 301), (9,)]]
    norms = [float(ms.jit(global_norm, static_argnums=1)(ms.mutable(tuple(tensors)), fused).asnumpy())
             for fused in (False, True)]
    assert norms[0] == pytest.approx(norms[1], rel=1e-6)


def test_kernels_sum_the_same_on_one_two_and_three_threads():
    """parallel_for's three ways: one thread; two (the caller and the parked helper take up to 8 parts from a
    counter); three (a std::thread per part). Partial sums are kept per part, so each gives numpy's sums."""
    lib = ctypes.CDLL(host._library())
    rng = np.random.default_rng(3)
    x = np.asarray(rng.normal(size=1_000_003) * 100, np.float32)
    logits = (rng.normal(size=(300, 1001)) * 4).astype(np.float32)  # 300K values: 9 parts
    labels = rng.integers(0, 1001, 300).astype(np.int32)
    x64 = logits.astype(np.float64)
    top = x64.max(1)
    want_loss = (np.log(np.exp(x64 - top[:, None]).sum(1)) + top - x64[np.arange(300), labels]).sum()
    try:
        for count in (1, 2, 3):
            lib.set_threads(count)
            got = float(ms.jit(host.squared_sum)(Tensor(x)).asnumpy())
            np.testing.assert_allclose(got, float((x.astype(np.float64) ** 2).sum()), rtol=1e-7, err_msg=str(count))
            loss, _ = ms.jit(host.softmax_cross_entropy)(Tensor(logits), Tensor(labels), Tensor([1.0], ms.float32))
            np.testing.assert_allclose(float(loss.asnumpy()[0]), want_loss, rtol=1e-6, err_msg=str(count))
    finally:
        lib.set_threads(host.threads())


class Weights(nn.Cell):
    def __init__(self, rng):
        super().__init__()
        self.big = Parameter(Tensor(rng.normal(size=(300, 400)).astype(np.float32)), name="big")  # threaded
        self.small = Parameter(Tensor(rng.normal(size=(7,)).astype(np.float32)), name="small")


@pytest.mark.parametrize("grad_scale", [None, 0.37])
def test_fused_adamw_equals_the_generic_update(monkeypatch, grad_scale):
    rng = np.random.default_rng(1)
    grads = [[rng.normal(size=(300, 400)).astype(np.float32), rng.normal(size=(7,)).astype(np.float32)]
             for _ in range(4)]
    results = []
    for fused in (True, False):
        monkeypatch.setenv(host.ENV_SWITCH, "1" if fused else "0")
        cell = Weights(np.random.default_rng(2))
        groups = [{"params": [cell.big], "lr": 0.01, "weight_decay": 0.1},
                  {"params": [cell.small], "lr": 0.003, "weight_decay": 0.0}]
        optimizer = AdamW(groups, betas=(0.9, 0.95), eps=1e-6)
        assert optimizer.fused is fused

        def apply(g, factor, scale):
            return optimizer(g, factor, (), scale)

        step = ms.jit(apply)
        for factor, grad in zip([1.0, 0.5, 0.25, 0.0], grads):
            scale = None if grad_scale is None else Tensor(grad_scale, ms.float32)
            step(ms.mutable(tuple(Tensor(g) for g in grad)), Tensor(factor, ms.float32), scale)
        results.append([t.asnumpy() for t in (cell.big, cell.small, *optimizer.exp_avg, *optimizer.exp_avg_sq)])
    for fused_value, generic_value in zip(*results):
        np.testing.assert_allclose(fused_value, generic_value, rtol=2e-6, atol=1e-7)
    assert not np.allclose(results[0][0], Weights(np.random.default_rng(2)).big.asnumpy())  # it did train


def test_training_steps_equal_with_and_without_kernels(monkeypatch, tmp_path):
    from mindformers import TrainingArguments
    from mindformers.trainer.optim import build_optimizer
    from mindformers.trainer.trainer import _StepFunctions
    from tests.trainer.conftest import tiny_llama

    rng = np.random.default_rng(3)
    ids = Tensor(rng.integers(3, 49152, (2, 16)).astype(np.int32))
    mask = Tensor(np.ones((2, 16), np.int32))
    runs = []
    for fused in (True, False):
        monkeypatch.setenv(host.ENV_SWITCH, "1" if fused else "0")
        model = tiny_llama(seed=4)
        args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-2, weight_decay=0.1, max_grad_norm=0.5)
        steps = _StepFunctions(model, build_optimizer(model, args), args, world_size=1)
        assert steps.fused is fused
        history = []
        for factor in (1.0, 0.5, 0.25):
            loss, norm, _ = steps.step(ids, mask, ids, Tensor([30.0], ms.float32), Tensor(factor, ms.float32))
            history.append((float(loss.asnumpy()[0]), float(norm.asnumpy())))
        runs.append((history, {p.name: p.asnumpy() for p in model.trainable_params()}))
    (fused_history, fused_params), (generic_history, generic_params) = runs
    np.testing.assert_allclose(fused_history, generic_history, rtol=1e-5)
    assert fused_history[0][1] > 0.5  # clipping was active
    for name, value in fused_params.items():
        # Adam moves every weight by ~lr whatever its gradient's size, so the kernels' rounding of small
        # gradients shows at ~lr * 1e-3, and further where such a gradient changes sign between steps (m nearly
        # cancels): with the fused SwiGLU and rotary too, 1 of down_proj's 2,048 values moved 3.5e-5 more and 2
        # of the embedding's 1.5M 2e-4. A wrong kernel moves most values by ~lr.
        close = np.isclose(value, generic_params[name], rtol=1e-4, atol=2e-5)
        assert close.mean() > 0.999, (name, close.mean())
        np.testing.assert_allclose(value, generic_params[name], rtol=1e-4, atol=5e-4, err_msg=name)


def test_a_machine_without_compiler_gets_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("MINDFORMERS_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises((RuntimeError, OSError), match="no-such-compiler|compil"):
        host.build()
    assert not list(tmp_path.rglob("*.so"))  # nothing half-built is left


def test_build_is_cached_per_source(monkeypatch, tmp_path):
    monkeypatch.setenv("MINDFORMERS_CACHE", str(tmp_path))
    path = host.build()
    assert path.startswith(str(tmp_path)) and path.endswith(".so")
    mtime = os.path.getmtime(path)
    assert host.build() == path and os.path.getmtime(path) == mtime  # not rebuilt
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [path.rsplit("/", 1)[1]]


def test_kernels_take_the_thread_count_mindspore_hides(monkeypatch):
    """Importing MindSpore sets OMP_NUM_THREADS to 1 in the C environment (os.environ keeps the value the
    process started with): the library runs on host.threads(), not on that 1."""
    libc = ctypes.CDLL(None)
    libc.getenv.restype = ctypes.c_char_p
    if "OMP_NUM_THREADS" not in os.environ:
        assert libc.getenv(b"OMP_NUM_THREADS") == b"1"  # what the library would otherwise read
    assert ctypes.CDLL(host._library()).get_threads() == host.threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert host.threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert host.threads() == 3
    for unusable in ("0", "four"):
        monkeypatch.setenv("OMP_NUM_THREADS", unusable)
        assert host.threads() == len(os.sched_getaffinity(0))


def _loss_and_grads(model, ids, mask, labels, train):
    model.set_train(train)
    params = model.trainable_params()

    def loss_of(i, m, l):
        return model(i, m, None, l)[0]

    loss, grads = ms.jit(ms.value_and_grad(loss_of, None, params))(ids, mask, labels)
    logits = model(ids, mask, None, labels)[1]  # eagerly
    model.set_train(False)
    return float(loss.asnumpy()), logits, {p.name: g.asnumpy() for p, g in zip(params, grads)}


@pytest.mark.parametrize("tied,extra_label", [(True, False), (False, False), (True, True)])
def test_fused_head_loss_equals_the_logits_loss(tied, extra_label):
    """Training mode on CPU takes the loss and its gradients from LinearCrossEntropy (no logits); they equal
    the cross entropy of the logits: tied and untied heads, ignored labels, pre-training rows (seq + 1)."""
    from tests.trainer.conftest import tiny_llama

    model = tiny_llama(seed=5, tie_word_embeddings=tied)
    assert model.fused_loss is not None
    rng = np.random.default_rng(6)
    ids = rng.integers(3, 49152, (2, 17 if extra_label else 16)).astype(np.int32)
    labels = ids.copy()
    labels[0, 3:8] = -100
    ids = ids[:, :16]
    mask = np.ones((2, 16), np.int32)
    fused = _loss_and_grads(model, Tensor(ids), Tensor(mask), Tensor(labels), train=True)
    generic = _loss_and_grads(model, Tensor(ids), Tensor(mask), Tensor(labels), train=False)
    assert fused[1] is None and generic[1] is not None
    assert fused[0] == pytest.approx(generic[0], rel=1e-6)
    assert (not tied) == ("lm_head.weight" in fused[2])
    for name, grad in generic[2].items():
        np.testing.assert_allclose(fused[2][name], grad, rtol=1e-4, atol=2e-6 * np.abs(grad).max(), err_msg=name)


def test_softmax_cross_entropy_kernel_against_numpy():
    rng = np.random.default_rng(7)
    logits = (rng.normal(size=(37, 1001)) * 4).astype(np.float32)  # odd vocabulary: vector tails
    labels = rng.integers(0, 1001, 37).astype(np.int32)
    labels[[0, 5, 36]] = -100
    loss, grad = ms.jit(host.softmax_cross_entropy)(Tensor(logits), Tensor(labels), Tensor([0.25], ms.float32))
    x = logits.astype(np.float64)
    top = x.max(1, keepdims=True)
    exp = np.exp(x - top)
    keep = labels >= 0
    rows = np.arange(37)[keep]
    expected = (np.log(exp.sum(1)) + top[:, 0])[keep] - x[rows, labels[keep]]
    np.testing.assert_allclose(float(loss.asnumpy()[0]), expected.sum(), rtol=1e-6)
    want = 0.25 * exp / exp.sum(1, keepdims=True)
    want[rows, labels[keep]] -= 0.25
    want[~keep] = 0
    np.testing.assert_allclose(grad.asnumpy(), want, atol=2e-7)


def test_heads_that_are_not_the_plain_product_keep_the_logits_loss():
    """A tuner's lm_head (LoRA) is not fused: training mode still returns logits and the same loss."""
    from mindformers.tuners import LoraConfig, get_peft_model
    from tests.trainer.conftest import tiny_llama

    model = get_peft_model(tiny_llama(seed=8, tie_word_embeddings=False),
                           LoraConfig(r=2, target_modules=["lm_head"], init_lora_weights=False), seed=0)
    ids = Tensor(np.random.default_rng(9).integers(3, 49152, (1, 8)).astype(np.int32))
    model.set_train(True)
    loss, logits = model(ids, None, None, ids)[:2]
    assert logits is not None and logits.shape == (1, 8, 49152)


class Cache(nn.Cell):
    def __init__(self, dtype):
        super().__init__()
        self.k = Parameter(Tensor(np.zeros((3, 2, 9, 4), np.float32), dtype=dtype), name="k", requires_grad=False)
        self.v = Parameter(Tensor(np.zeros((3, 2, 9, 4), np.float32), dtype=dtype), name="v", requires_grad=False)
        self.host_write = host.enabled()

    def construct(self, k, v, index, rows=None):
        return update_cache(self.k, self.v, k, v, index, rows, self.host_write)


@pytest.mark.parametrize("dtype", [ms.float32, ms.float16, ms.bfloat16])
def test_cache_write_equals_scatter_nd_update(monkeypatch, dtype):
    """The in-place KV-cache write against numpy and MindSpore's ScatterNdUpdate: two steps (a prefill of 3
    slots, a decode of 1) on rows picked by cache_rows, the caches and the returned rows equal. bfloat16:
    rows 0 and 1 and no generic path (MindSpore's CPU Gather and ScatterNdUpdate have no bfloat16; the
    kernel gives such models a KV cache on CPU)."""
    rng = np.random.default_rng(4)
    bf16 = dtype == ms.bfloat16
    steps = [(rng.normal(size=(2, 2, 3, 4)), np.array([[0, 1, 2], [5, 6, 8]]), np.array([0, 1] if bf16 else [2, 0])),
             (rng.normal(size=(2, 2, 1, 4)), np.array([[3], [7]]), np.array([0, 1] if bf16 else [2, 0]))]
    expected = np.zeros((2, 3, 2, 9, 4), np.float32)
    results = []
    for fused in (True,) if bf16 else (True, False):
        monkeypatch.setenv(host.ENV_SWITCH, "1" if fused else "0")
        cache = Cache(dtype)
        step = ms.jit(cache.construct)
        outs = []
        for values, slots, rows in steps:
            picked = None if bf16 else Tensor(rows.astype(np.int32))
            index = cache_write_index(Tensor(slots.astype(np.int32)), 2, picked)
            value = Tensor(values.astype(np.float32), dtype=dtype)
            k, v = step(value, value * 2, index, picked)
            outs += [k.astype(ms.float32).asnumpy(), v.astype(ms.float32).asnumpy()]
            if fused:
                rounded = value.astype(ms.float32).asnumpy()
                for i, row in enumerate(rows):
                    expected[0, row, :, slots[i]] = rounded[i].transpose(1, 0, 2)
                    expected[1, row, :, slots[i]] = 2 * rounded[i].transpose(1, 0, 2)
        caches = [cache.k.astype(ms.float32).asnumpy(), cache.v.astype(ms.float32).asnumpy()]
        np.testing.assert_array_equal(np.stack(caches), expected)
        results.append(outs)
    if not bf16:
        for fused_value, generic_value in zip(*results):
            np.testing.assert_array_equal(fused_value, generic_value)


def _norm_value_and_grads(norm, x, dy, jit):
    def loss_of(x):
        return (norm(x) * dy).sum()

    run = ms.value_and_grad(loss_of, 0, norm.trainable_params())
    value, (dx, (dw,)) = (ms.jit(run) if jit else run)(x)
    return norm(x).asnumpy(), dx.asnumpy(), dw.asnumpy()


@pytest.mark.parametrize("shape", [(2, 5, 576), (2, 3, 7, 64), (130, 577), (1, 1, 33)])
@pytest.mark.parametrize("jit", [False, True])
def test_rms_norm_kernel_equals_the_generic_ops(shape, jit):
    """RMSNorm's float32 CPU path (HostRMSNorm: one kernel each way) gives the generic ops' output and
    gradients (x and weight): model rows, per-head norms (Qwen3's q_norm), a size split over two threads
    (130 x 577), odd sizes."""
    from mindformers.models.common.layers import RMSNorm

    rng = np.random.default_rng(7)
    weight = Tensor(rng.normal(size=shape[-1]).astype(np.float32))
    x = Tensor(rng.normal(size=shape).astype(np.float32) * 3)
    dy = Tensor(rng.normal(size=shape).astype(np.float32))
    results = []
    for fused in (True, False):
        norm = RMSNorm(shape[-1], eps=1e-5)
        assert (norm.fused is not None) == host.enabled()
        if not fused:
            norm.fused = None
        norm.weight.set_data(weight)
        results.append(_norm_value_and_grads(norm, x, dy, jit))
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # the weight's gradient against numpy too: sum over rows of dy * x / rms
    x64, dy64 = x.asnumpy().astype(np.float64), dy.asnumpy().astype(np.float64)
    normed = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(results[0][2], (dy64 * normed).reshape(-1, shape[-1]).sum(0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("heads,kv_heads,q_len,k_len", [(4, 2, 5, 7), (3, 3, 1, 9), (9, 3, 40, 40)])
@pytest.mark.parametrize("jit", [False, True])
def test_attention_softmax_kernel_equals_the_generic_ops(heads, kv_heads, q_len, k_len, jit):
    """grouped_attention with HostAttentionSoftmax (the float32 CPU path) gives the generic ops' output and
    gradients for q, k and v: grouped heads, a decode step (q_len 1), masked positions (NEG_INF) and a fully masked row; a size split over two threads (9 x 40 x 40 rows)."""
    from mindformers.models.common.attention import NEG_INF, HostAttentionSoftmax, grouped_attention

    rng = np.random.default_rng(8)
    batch, dim, scale = 2, 8, 8 ** -0.5
    q, k, v, dout = (Tensor(rng.normal(size=s).astype(np.float32)) for s in
                     ((batch, heads, q_len, dim), (batch, kv_heads, k_len, dim), (batch, kv_heads, k_len, dim),
                      (batch, heads, q_len, dim)))
    mask = np.where(rng.random((batch, 1, q_len, k_len)) < 0.3, NEG_INF, 0.0).astype(np.float32)
    mask[0, 0, 0] = NEG_INF  # a row with nothing to attend to (padding): uniform in both paths
    bias = Tensor(mask)
    softmax = HostAttentionSoftmax(scale)

    def run(fused):
        def loss_of(q, k, v):
            return (grouped_attention(q, k, v, bias, scale, None, softmax if fused else None) * dout).sum()

        grad = ms.value_and_grad(loss_of, (0, 1, 2))
        _, grads = (ms.jit(grad) if jit else grad)(q, k, v)
        out = grouped_attention(q, k, v, bias, scale, None, softmax if fused else None)
        return [out.asnumpy()] + [g.asnumpy() for g in grads]

    for got, want in zip(run(True), run(False)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_softmax_kernel_masked_positions_are_exactly_zero():
    """Masked positions (the most negative float) get probability 0, not expf's smallest values, also in rows
    whose scores are all negative; the kernel clamps their exponent's argument (glibc's vector expf is ~10x
    slower on out-of-range arguments) and the others equal numpy's softmax."""
    from mindformers.models.common.attention import NEG_INF

    rng = np.random.default_rng(11)
    scores = rng.normal(size=(2, 3, 17, 40)).astype(np.float32) * 4 - 20  # every row's maximum below zero
    mask = np.where(rng.random((2, 1, 17, 40)) < 0.5, NEG_INF, 0.0).astype(np.float32)
    mask[..., 0] = 0.0  # each row keeps a position
    probs = host.softmax_bias(Tensor(scores), Tensor(mask), Tensor(np.array([0.5], np.float32))).asnumpy()
    masked = np.broadcast_to(mask == NEG_INF, probs.shape)
    assert (probs[masked] == 0).all()
    logits = np.where(masked, -np.inf, scores.astype(np.float64) * 0.5)
    want = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(probs, want / want.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("jit", [False, True])
def test_attention_softmax_kernel_with_a_prefix_equals_the_generic_ops(jit):
    """With a prefix (prefix tuning's keys and values) grouped_attention takes the host softmax alone, not the
    whole attention: the same output and gradients (q, k, v and the prefix's) as the generic ops."""
    from mindformers.models.common.attention import NEG_INF, HostAttentionSoftmax, grouped_attention

    rng = np.random.default_rng(9)
    batch, heads, kv_heads, q_len, k_len, n, dim = 2, 4, 2, 3, 5, 2, 8
    shapes = ((batch, heads, q_len, dim), (batch, kv_heads, k_len, dim), (batch, kv_heads, k_len, dim),
              (batch, kv_heads, n, dim), (batch, kv_heads, n, dim), (batch, heads, q_len, dim))
    q, k, v, pk, pv, dout = (Tensor(rng.normal(size=s).astype(np.float32)) for s in shapes)
    bias = Tensor(np.where(rng.random((batch, 1, q_len, n + k_len)) < 0.3, NEG_INF, 0.0).astype(np.float32))
    softmax = HostAttentionSoftmax(dim ** -0.5)

    def run(fused):
        def loss_of(q, k, v, pk, pv):
            out = grouped_attention(q, k, v, bias, dim ** -0.5, None, softmax if fused else None, (pk, pv))
            return (out * dout).sum()

        grad = ms.value_and_grad(loss_of, (0, 1, 2, 3, 4))
        value, grads = (ms.jit(grad) if jit else grad)(q, k, v, pk, pv)
        return [value.asnumpy()] + [g.asnumpy() for g in grads]

    for got, want in zip(run(True), run(False)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_attention_gradient_graph_transposes_nothing(tmp_path):
    """The host path's attention gradient reads the probabilities and queries as they are (BatchMatMul with
    transpose_a): MindSpore's autodiff of the products added Transpose kernels, whose buffers a compiled
    graph keeps for its life (docs/mindspore_cpu.md)."""
    from mindformers.models.common.attention import HostAttentionSoftmax, grouped_attention
    from tests.generation.test_decode_graphs import compiled_graphs

    rng = np.random.default_rng(10)
    q, dout = (Tensor(rng.normal(size=(2, 4, 6, 8)).astype(np.float32)) for _ in range(2))
    k, v = (Tensor(rng.normal(size=(2, 2, 6, 8)).astype(np.float32)) for _ in range(2))
    bias = Tensor(np.zeros((2, 1, 6, 6), np.float32))
    texts = {}
    for fused in (True, False):
        softmax = HostAttentionSoftmax(8 ** -0.5) if fused else None

        def loss_of(q, k, v):
            return (grouped_attention(q, k, v, bias, 8 ** -0.5, None, softmax) * dout).sum()

        run = ms.jit(ms.grad(loss_of, (0, 1, 2)))
        graphs = compiled_graphs(lambda: run(q, k, v), tmp_path / str(fused))
        texts[fused] = "\n".join(graphs.values())
    assert "= PrimFunc_Transpose(" in texts[False] or "= Transpose(" in texts[False]  # what the check would see
    assert "Transpose(" not in texts[True]


@pytest.mark.parametrize("dtype", [ms.float32, ms.float16, ms.bfloat16])
def test_swap_axes_kernel_equals_swapaxes(dtype):
    """split_heads/merge_heads with HostSwapAxes (the CPU path) give swapaxes' values and gradients, in and
    out of graphs; bfloat16 and float16 move as 2-byte elements; a size split over two threads."""
    from mindformers.models.common.attention import HostSwapAxes, merge_heads, split_heads

    rng = np.random.default_rng(9)
    x = Tensor(rng.normal(size=(3, 70, 6 * 40)).astype(np.float32)).astype(dtype)  # [batch, seq, heads * dim]
    weight = Tensor(rng.normal(size=(3, 6, 70, 40)).astype(np.float32)).astype(dtype)
    swap = HostSwapAxes()
    for s in (swap, None):
        assert np.array_equal(merge_heads(split_heads(x, 6, 40, s), s).astype(ms.float32).asnumpy(),
                              x.astype(ms.float32).asnumpy())
    if dtype != ms.float32:
        return  # gradients in float32 (the training path)
    def loss_with(s):
        def loss_of(x):
            return (split_heads(x, 6, 40, s) * weight).sum() + (merge_heads(weight, s) * x).sum()
        return loss_of

    results = []
    for s in (swap, None):
        loss_of = loss_with(s)
        results.append([r.asnumpy() for r in (split_heads(x, 6, 40, s), ms.jit(ms.grad(loss_of))(x),
                                              ms.grad(loss_of)(x))])
    for got, want in zip(*results):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("ids_dtype", [np.int32, np.int64])
def test_embedding_grad_add_kernel_against_numpy(ids_dtype):
    """``grad[ids[i]] += d[i]`` in place, inside a compiled graph: repeated ids add up, ids outside the table
    are skipped (as the lookup's own gradient drops them), the rest of the table is untouched."""
    rng = np.random.default_rng(7)
    grad = rng.normal(size=(11, 37)).astype(np.float32)
    ids = np.array([[3, 0, 3], [10, 11, -1], [3, 5, 0]], ids_dtype)
    d = rng.normal(size=ids.shape + (37,)).astype(np.float32)

    @ms.jit
    def add(g, i, rows):
        g = g * 1.0  # a buffer of the graph's own, as the gradient the trainer adds into
        return ms.ops.depend(g, host.embedding_grad_add_(g, i, rows))

    got = add(Tensor(grad), Tensor(ids), Tensor(d)).asnumpy()
    expected = grad.copy()
    for i, row in zip(ids.reshape(-1), d.reshape(-1, 37)):
        if 0 <= i < 11:
            expected[i] += row
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert not np.allclose(expected, grad)


def _tiny_gpt2(seed):
    from mindformers.models.gpt2 import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel.from_config(GPT2Config(num_layers=2, hidden_size=32, num_heads=4, vocab_size=500,
                                                  seq_length=32, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0),
                                       seed=seed)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_tied_table_looked_up_outside_the_gradient_equals_autodiff(tmp_path, family):
    """The training step of a tied model looks the tokens up before the differentiated loss and adds the
    embeddings' gradient rows into the head's gradient in place (one table-sized tensor instead of three):
    loss and every gradient as autodiff of the whole model gives them, with repeated ids in the batch;
    GPT-2 adds its position embeddings to the looked-up rows."""
    from mindformers import TrainingArguments
    from mindformers.trainer.optim import build_optimizer
    from mindformers.trainer.trainer import _StepFunctions
    from tests.trainer.conftest import tiny_llama

    model = tiny_llama(seed=5) if family == "llama" else _tiny_gpt2(seed=5)
    vocab = model.config.vocab_size
    rng = np.random.default_rng(8)
    ids = rng.integers(3, vocab, (2, 16)).astype(np.int32)
    ids[1, :4] = ids[0, :4]
    ids[0, 7] = ids[0, 6]
    labels = ids.copy()
    labels[0, :3] = -100
    ids, mask, labels = Tensor(ids), Tensor(np.ones((2, 16), np.int32)), Tensor(labels)
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-2)
    optimizer = build_optimizer(model, args)
    steps = _StepFunctions(model, optimizer, args, world_size=1)
    assert optimizer.parameters[steps.tied_table] is model.tied_embedding_table()
    model.set_train(True)
    (loss, _), grads = steps.gradients(ids, mask, labels)

    def loss_of(input_ids, attention_mask, targets):
        return model(input_ids, attention_mask, None, targets)[0]

    expected_loss, expected = ms.jit(ms.value_and_grad(loss_of, None, optimizer.parameters))(ids, mask, labels)
    np.testing.assert_allclose(loss.asnumpy(), expected_loss.asnumpy(), rtol=1e-6)
    for param, got, want in zip(optimizer.parameters, grads, expected):
        np.testing.assert_allclose(got.asnumpy(), want.asnumpy(), rtol=1e-4, atol=1e-6, err_msg=param.name)


def test_untied_or_tuned_models_differentiate_their_lookup(tmp_path):
    """An own lm_head, a tuner (its table frozen, its lookup maybe wrapped) or tensor parallelism keep the
    whole model under autodiff."""
    from mindformers import TrainingArguments
    from mindformers.trainer.optim import build_optimizer
    from mindformers.trainer.checkpointing import tuner_of
    from mindformers.trainer.trainer import _tied_table_index
    from mindformers.tuners import LoraConfig
    from mindformers.tuners.peft import get_peft_model
    from tests.trainer.conftest import tiny_llama

    args = TrainingArguments(output_dir=str(tmp_path))
    untied = tiny_llama(tie_word_embeddings=False)
    assert untied.tied_embedding_table() is None
    assert _tied_table_index(untied, build_optimizer(untied, args).parameters, None, None) is None
    tied = tiny_llama()
    parameters = build_optimizer(tied, args).parameters
    assert _tied_table_index(tied, parameters, None, None) is not None
    assert _tied_table_index(tied, parameters, None, object()) is None  # tensor parallel
    tuned = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    assert tuner_of(tuned) is not None
    assert _tied_table_index(tuned, build_optimizer(tuned, args).parameters, tuner_of(tuned), None) is None


@pytest.mark.parametrize("rows,fan_in,fan_out", [(1, 576, 1536), (7, 33, 13), (32, 64, 40), (3, 5, 2), (65, 17, 9)])
@pytest.mark.parametrize("jit", [False, True])
def test_linear_kernel_against_numpy(rows, fan_in, fan_out, jit):
    # row counts off the 4-row blocks, weights off the 4-row blocks and 32-row chunks, inputs off the vector
    # width; 1 x 576 -> 1536 is a batch-1 decode step of SmolLM2's MLP (both threads)
    rng = np.random.default_rng(rows * fan_in + fan_out)
    x = rng.normal(size=(rows, fan_in)).astype(np.float32)
    w = rng.normal(size=(fan_out, fan_in)).astype(np.float32)
    run = ms.jit(host.linear) if jit else host.linear
    got = run(Tensor(x), Tensor(w)).asnumpy()
    assert got.shape == (rows, fan_out)
    np.testing.assert_allclose(got, x.astype(np.float64) @ w.T.astype(np.float64), rtol=1e-5, atol=1e-5)
    got3 = run(Tensor(x.reshape(1, rows, fan_in)), Tensor(w)).asnumpy()  # leading axes kept
    np.testing.assert_array_equal(got3, got.reshape(1, rows, fan_out))


def test_linear_kernel_gives_a_row_the_same_numbers_alone_or_in_a_batch():
    # a single row reads the weight row after row, more rows in blocks side by side: each dot product sums
    # in the same order, so a batch-1 decode step and a batch's row agree to the bit
    rng = np.random.default_rng(5)
    x = rng.normal(size=(5, 576)).astype(np.float32)
    w = rng.normal(size=(1536, 576)).astype(np.float32)
    batch = host.linear(Tensor(x), Tensor(w)).asnumpy()
    for row in range(len(x)):
        np.testing.assert_array_equal(host.linear(Tensor(x[row:row + 1]), Tensor(w)).asnumpy(), batch[row:row + 1])


def test_tied_head_uses_the_kernel_for_few_rows_outside_training(monkeypatch):
    from mindformers.models.common import layers
    from tests.trainer.conftest import tiny_llama

    model = tiny_llama(seed=6, vocab_size=300)
    model.set_train(False)
    table = model.tied_embedding_table().asnumpy()
    calls = []
    monkeypatch.setattr(layers.host, "linear",
                        lambda x, w: calls.append((x.shape, w.shape)) or ms.ops.matmul(x, w.T))
    ids = Tensor(np.array([[5, 17, 42]], np.int32))
    logits = model(ids).asnumpy()
    assert ((3, 32), table.shape) in calls  # the head's product: 3 rows against the table
    calls.clear()
    model.set_train(True)  # training keeps MindSpore's MatMul (and the fused loss with labels)
    np.testing.assert_allclose(model(ids).asnumpy(), logits, rtol=1e-5, atol=1e-5)
    assert calls == []


def test_linear_layer_uses_the_kernel_for_few_rows_outside_training(monkeypatch):
    from mindformers.models.common import layers

    rng = np.random.default_rng(3)
    layer = layers.Linear(24, 10, bias=True)
    layer.weight.set_data(Tensor(rng.normal(size=(10, 24)).astype(np.float32)))
    layer.bias.set_data(Tensor(rng.normal(size=(10,)).astype(np.float32)))
    calls = []
    monkeypatch.setattr(layers.host, "linear", lambda x, w: calls.append(x.shape) or ms.ops.matmul(x, w.T))
    x = rng.normal(size=(2, 3, 24)).astype(np.float32)
    want = x @ layer.weight.asnumpy().T + layer.bias.asnumpy()
    np.testing.assert_allclose(layer(Tensor(x)).asnumpy(), want, rtol=1e-5, atol=1e-5)
    assert calls == [(6, 24)]
    layer.set_train(True)  # training graphs keep MindSpore's MatMul (and its gradient)
    np.testing.assert_allclose(layer(Tensor(x)).asnumpy(), want, rtol=1e-5, atol=1e-5)
    layer.set_train(False)
    many = rng.normal(size=(layers.HOST_LINEAR_ROWS + 1, 24)).astype(np.float32)  # a prefill: MatMul
    layer(Tensor(many))
    assert calls == [(6, 24)]


def test_linear_kernel_gradient_outside_training():
    # a model not in training mode still differentiates (its bprop is MindSpore's matmuls)
    from mindformers.models.common.layers import Linear

    rng = np.random.default_rng(4)
    layer = Linear(20, 7, bias=False)
    w = rng.normal(size=(7, 20)).astype(np.float32)
    layer.weight.set_data(Tensor(w))
    x = rng.normal(size=(5, 20)).astype(np.float32)
    dy = rng.normal(size=(5, 7)).astype(np.float32)
    grad = ms.grad(lambda inp: (layer(inp) * Tensor(dy)).sum(), grad_position=0, weights=layer.trainable_params())
    dx, (dw,) = grad(Tensor(x))
    np.testing.assert_allclose(dx.asnumpy(), dy @ w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw.asnumpy(), dy.T @ x, rtol=1e-5, atol=1e-5)
