"""The fused SwiGLU and rotary host kernels (forward and gradient) against MindSpore's generic ops, eagerly and
compiled, and a tiny Llama's loss and gradients with the kernels on and off."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from mindformers.kernels import host
from mindformers.models.common.layers import HostRotary, apply_rotary
from mindformers.models.common.mlp import HostSwiGLU, gated_activation, swiglu

pytestmark = pytest.mark.skipif(not host.enabled(), reason="no C++ compiler: the host kernels are not built")


def _value_and_grads(fn, args, weight, argnums, compiled):
    """``sum(fn(*args) * weight)`` and its gradients with respect to ``args[argnums]``: weight is a random
    upstream gradient, so every output element's gradient is checked."""
    def loss(*inputs):
        return (fn(*inputs) * weight).sum()

    run = ms.value_and_grad(loss, argnums)
    if compiled:
        run = ms.jit(run)
    out = ms.jit(fn)(*args) if compiled else fn(*args)
    _, grads = run(*args)
    return out.asnumpy(), [g.asnumpy() for g in (grads if isinstance(grads, tuple) else (grads,))]


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("shape", [(3, 7, 37), (70001,)])  # odd tails; above the threaded size
def test_swiglu_equals_silu_times_up(shape, compiled):
    rng = np.random.default_rng(0)
    gate = rng.normal(size=shape).astype(np.float32) * 4
    gate.reshape(-1)[:4] = [-100.0, -30.0, 30.0, 0.0]  # exp(-g) overflows, sigmoid saturates
    up = rng.normal(size=shape).astype(np.float32)
    weight = Tensor(rng.normal(size=shape).astype(np.float32))
    args = (Tensor(gate), Tensor(up))
    fused_cell = HostSwiGLU()

    def fused_swiglu(g, u):
        return swiglu(g, u, fused_cell)

    fused = _value_and_grads(fused_swiglu, args, weight, (0, 1), compiled)
    generic = _value_and_grads(swiglu, args, weight, (0, 1), compiled)
    np.testing.assert_allclose(fused[0], generic[0], rtol=1e-6, atol=1e-6)
    for got, want in zip(fused[1], generic[1]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # and the formula, in double
    g, u, w = gate.astype(np.float64), up.astype(np.float64), weight.asnumpy().astype(np.float64)
    sig = 1 / (1 + np.exp(-g))
    np.testing.assert_allclose(fused[0], g * sig * u, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused[1][0], w * u * sig * (1 + g * (1 - sig)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused[1][1], w * g * sig, rtol=1e-5, atol=1e-6)


def test_gated_activation_of_a_fused_projection():
    rng = np.random.default_rng(1)
    gate_up = Tensor(rng.normal(size=(5, 3, 2 * 11)).astype(np.float32))
    weight = Tensor(rng.normal(size=(5, 3, 11)).astype(np.float32))
    fused_cell = HostSwiGLU()

    def activation(x, fused=None):
        return gated_activation(x, 11, fused)

    def fused_activation(x):
        return activation(x, fused_cell)

    fused = _value_and_grads(fused_activation, (gate_up,), weight, 0, True)
    generic = _value_and_grads(activation, (gate_up,), weight, 0, True)
    np.testing.assert_allclose(fused[0], generic[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fused[1][0], generic[1][0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("table_batch", [1, 3])  # one table for every row, or one per row
def test_rotary_equals_rotate_half(table_batch, compiled):
    rng = np.random.default_rng(2)
    shape = (3, 5, 7, 18)  # [batch, heads, seq, head_dim]: odd sizes, head_dim / 2 odd
    x = Tensor(rng.normal(size=shape).astype(np.float32))
    angles = rng.uniform(-7, 7, size=(table_batch, 1, 7, 18)).astype(np.float32)  # halves differ: the general case
    cos, sin = Tensor(np.cos(angles) * 1.3), Tensor(np.sin(angles) * 1.3)  # YaRN scales both
    weight = Tensor(rng.normal(size=shape).astype(np.float32))
    fused_cell = HostRotary()

    def fused_rotary(a, c, s):
        return apply_rotary(a, c, s, fused_cell)

    fused = _value_and_grads(fused_rotary, (x, cos, sin), weight, (0, 1, 2), compiled)
    generic = _value_and_grads(apply_rotary, (x, cos, sin), weight, (0, 1, 2), compiled)
    np.testing.assert_allclose(fused[0], generic[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fused[1][0], generic[1][0], rtol=1e-6, atol=1e-6)
    assert not fused[1][1].any() and not fused[1][2].any()  # the tables get no gradient


def test_rotary_falls_back_where_the_kernel_does_not_fit():
    """float16 inputs and tables that are not [batch or 1, 1, seq, dim] take the generic ops."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 4, 8)).astype(np.float32)
    cos, sin = (Tensor(rng.normal(size=(2, 3, 4, 8)).astype(np.float32)) for _ in range(2))  # per head
    fused_cell = HostRotary()

    def fused_rotary(a, c, s):
        return apply_rotary(a, c, s, fused_cell)

    for value in (Tensor(x), Tensor(x, ms.float16)):
        got = ms.jit(fused_rotary)(value, cos, sin)
        want = apply_rotary(value, cos, sin)
        assert got.dtype == value.dtype
        np.testing.assert_allclose(got.astype(ms.float32).asnumpy(), want.astype(ms.float32).asnumpy(), rtol=1e-3)


def _tiny_llama_runs(monkeypatch, fused: bool):
    """A tiny Llama built with the kernels on or off: its training loss, parameter gradients, greedy ids (KV
    cache) and eager logits."""
    from tests.trainer.conftest import tiny_llama

    monkeypatch.setenv(host.ENV_SWITCH, "1" if fused else "0")
    model = tiny_llama(seed=11, hidden_size=48, intermediate_size=80, num_attention_heads=3, num_key_value_heads=1)
    layer = model.model.layers[0]
    assert (layer.mlp.host_swiglu is not None) is fused and (layer.self_attn.host_rotary is not None) is fused
    rng = np.random.default_rng(12)
    ids = Tensor(rng.integers(3, 49152, (2, 13)).astype(np.int32))
    mask = Tensor(np.array([[1] * 13, [0] * 4 + [1] * 9], np.int32))  # a left-padded row: positions differ by row
    params = model.trainable_params()

    def loss_of(i, m):
        return model(i, m, None, i)[0]

    model.set_train(True)
    loss, grads = ms.jit(ms.value_and_grad(loss_of, None, params))(ids, mask)
    model.set_train(False)
    logits = model(ids, mask).asnumpy()  # eagerly: q and k reach the kernel from transposes (views in PyNative)
    generated = model.generate([[5, 9, 200, 4000, 17]], max_new_tokens=6, eos_token_id=[])
    return (float(loss.asnumpy()), {p.name: g.asnumpy() for p, g in zip(params, grads)}, np.asarray(generated[0]),
            logits)


def test_tiny_llama_equal_with_and_without_kernels(monkeypatch):
    fused, generic = _tiny_llama_runs(monkeypatch, True), _tiny_llama_runs(monkeypatch, False)
    assert fused[0] == pytest.approx(generic[0], rel=1e-5)
    assert fused[1].keys() == generic[1].keys()
    for name, grad in generic[1].items():
        np.testing.assert_allclose(fused[1][name], grad, rtol=1e-4, atol=1e-5 * np.abs(grad).max(), err_msg=name)
    np.testing.assert_array_equal(fused[2], generic[2])
    np.testing.assert_allclose(fused[3], generic[3], rtol=1e-5, atol=1e-5)
