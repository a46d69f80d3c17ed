"""The multi-LoRA kernels (serving/lora_kernels.py) against numpy: each row its own adapter at its own rank,
base rows and rank-0 slots untouched, in and out of a compiled graph; and the pool's writes reach them."""
import ctypes

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from mindformers.kernels import host
from mindformers.serving import lora_kernels
from mindformers.models.common.layers import Linear
from mindformers.serving.lora import AdapterPool, MultiLoraLinear

KERNELS = ["gather"] + (["host"] if host.enabled() else [])


def pool_arrays(rng, slots=4, max_rank=8, fan_in=6, fan_out=5, ranks=(2, 0, 8, 3)):
    """Slot factors with garbage beyond each slot's rank (it must never be read)."""
    a = rng.normal(size=(slots, max_rank, fan_in)).astype(np.float32)
    bt = rng.normal(size=(slots, max_rank, fan_out)).astype(np.float32)
    for slot, r in enumerate(ranks):
        a[slot, r:] = 1e6
    return a, bt, np.array(ranks, np.int32)


def expected(x, a, bt, ranks, row_slots):
    out = np.zeros(x.shape[:-1] + (bt.shape[-1],), np.float64)
    for row, slot in enumerate(row_slots[:x.shape[0]]):
        if slot >= 0 and ranks[slot]:
            r = ranks[slot]
            out[row] = x[row].astype(np.float64) @ a[slot, :r].T.astype(np.float64) @ bt[slot, :r].astype(np.float64)
    return out


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("row_slots", [[-1, 0, 0, 2, -1, 3, 3, 3],  # segments, base rows between them
                                       [0, 2, -1, 0, 2, 1, 3, 0],  # scattered rows of one adapter; slot 1 has rank 0
                                       [2, 2, 2, 2, 2, 2, 2, 2, -1, -1]])  # extra entries past the rows
@pytest.mark.parametrize("seq", [1, 7])  # decode rows and prefill rows (several blocks of tokens)
def test_kernel_matches_numpy(kernel, row_slots, seq):
    rng = np.random.default_rng(seq)
    a, bt, ranks = pool_arrays(rng)
    x = rng.normal(size=(8, seq, 6)).astype(np.float32)
    slots = np.array(row_slots, np.int32)
    want = expected(x, a, bt, ranks, slots)
    fn, pack = lora_kernels.KERNELS[kernel]
    for call in (fn, ms.jit(fn)):
        got = call(Tensor(x), Tensor(a), Tensor(pack(bt, ranks)), Tensor(ranks), Tensor(slots)).asnumpy()
        assert got.shape == (8, seq, 5) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        for row, slot in enumerate(slots[:8]):
            if slot < 0 or ranks[slot] == 0:
                assert not got[row].any()
        base = rng.normal(size=(8, seq, 5)).astype(np.float32)  # the layer's own output, added by the kernel
        got = call(Tensor(x), Tensor(a), Tensor(pack(bt, ranks)), Tensor(ranks), Tensor(slots), Tensor(base)).asnumpy()
        np.testing.assert_allclose(got, base + want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("fan_in, fan_out, seq", [(6, 5, 1), (37, 83, 1), (37, 83, 7), (64, 48, 5)])
def test_float16_factors_are_widened(kernel, fan_in, fan_out, seq):
    """A float16 pool (``lora_dtype``): the product of the float16 factors, computed in float32; sizes with
    and without vector tails, one-token rows and blocks of tokens."""
    rng = np.random.default_rng(fan_in + seq)
    a, bt, ranks = pool_arrays(rng, max_rank=8, fan_in=fan_in, fan_out=fan_out)
    a, bt = a.astype(np.float16), bt.astype(np.float16)  # 1e6 beyond the ranks: inf in float16, never read
    x = rng.normal(size=(8, seq, fan_in)).astype(np.float32)
    slots = np.array([0, 2, -1, 0, 2, 1, 3, 3], np.int32)
    want = expected(x, a, bt, ranks, slots)
    base = rng.normal(size=(8, seq, fan_out)).astype(np.float32)
    fn, pack = lora_kernels.KERNELS[kernel]
    if kernel == "gather":  # it multiplies at max_rank (masked): the factors beyond a rank must be finite
        a[np.isinf(a)] = 0
    for call in (fn, ms.jit(fn)):
        got = call(Tensor(x), Tensor(a), Tensor(pack(bt, ranks)), Tensor(ranks), Tensor(slots), Tensor(base)).asnumpy()
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, base + want, rtol=1e-5, atol=1e-4)
    # float32 factors give another product (the float16 rounding is what the pool serves)
    assert not np.allclose(want, expected(x, a.astype(np.float32) * (1 + 1e-3), bt, ranks, slots), atol=1e-4)


@pytest.mark.skipif(not host.enabled(), reason="no C++ compiler: the host kernels are not built")
def test_host_kernel_threads_and_high_ranks():
    """Enough work for the kernel's two threads, and a rank above its 256-wide block."""
    rng = np.random.default_rng(5)
    a, bt, ranks = pool_arrays(rng, slots=3, max_rank=300, fan_in=64, fan_out=48, ranks=(300, 17, 0))
    a[a == 1e6] = 0
    x = rng.normal(size=(6, 33, 64)).astype(np.float32)
    slots = np.array([0, 0, 1, -1, 0, 1], np.int32)
    got = host.lora_delta(Tensor(x), Tensor(a), Tensor(host.pack_columns(bt, ranks)), Tensor(ranks), Tensor(slots)).asnumpy()
    np.testing.assert_allclose(got, expected(x, a, bt, ranks, slots), rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(not host.enabled(), reason="no C++ compiler: the host kernels are not built")
@pytest.mark.parametrize("fan_in, fan_out, max_rank, seq", [(13, 7, 5, 3),  # all below one vector
                                                           (37, 83, 13, 5),  # vectors, tiles and their tails
                                                           (70, 150, 9, 1)])  # one-token blocks
def test_host_kernel_odd_sizes(fan_in, fan_out, max_rank, seq):
    """Sizes off the kernel's register blocks: tokens per block (4), ranks per block, vector width of `in`,
    out tiles; rows of one token (their own path), segments and a base row between them."""
    rng = np.random.default_rng(fan_in)
    a, bt, ranks = pool_arrays(rng, slots=4, max_rank=max_rank, fan_in=fan_in, fan_out=fan_out,
                               ranks=(max_rank, max_rank - 1, 1, 0))
    x = rng.normal(size=(7, seq, fan_in)).astype(np.float32)
    slots = np.array([0, 0, 1, -1, 2, 1, 1, 3, 0], np.int32)
    packed = host.pack_columns(bt, ranks)
    got = host.lora_delta(Tensor(x), Tensor(a), Tensor(packed), Tensor(ranks), Tensor(slots)).asnumpy()
    np.testing.assert_allclose(got, expected(x, a, bt, ranks, slots), rtol=1e-4, atol=1e-4)
    assert not got[3].any()
    base = rng.normal(size=(7, seq, fan_out)).astype(np.float32)  # added in every path: tiles, tails, one token
    got = host.lora_delta(Tensor(x), Tensor(a), Tensor(packed), Tensor(ranks), Tensor(slots), Tensor(base)).asnumpy()
    np.testing.assert_allclose(got, base + expected(x, a, bt, ranks, slots), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_pool_writes_reach_a_compiled_step(kernel, dtype):
    """Loading, unloading and binding rows write the pool's Parameters in place: a step compiled before sees
    them (no recompilation)."""
    pool = AdapterPool({"layer": (6, 45)}, max_num=3, max_rank=4, max_rows=4, kernel=kernel, dtype=dtype)
    assert pool.a["layer"].dtype == pool.bt["layer"].dtype == getattr(ms, dtype)
    assert pool.slot_bytes == np.dtype(dtype).itemsize * 4 * (6 + 45)
    layer = MultiLoraLinear(Linear(6, 45, bias=False), pool, "layer")
    layer.base.weight.set_data(Tensor(np.zeros((45, 6), np.float32)))  # the output is the adapters' delta alone
    step = ms.jit(layer.construct)
    x = np.random.default_rng(0).normal(size=(4, 1, 6)).astype(np.float32)
    assert not step(Tensor(x)).asnumpy().any()  # nothing loaded, every row base
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 6)).astype(np.float32), rng.normal(size=(45, 3)).astype(np.float32)
    a, b = a.astype(dtype).astype(np.float32), b.astype(dtype).astype(np.float32)  # as the pool holds them
    bt = lora_kernels.KERNELS[kernel].pack(np.pad(b.T, ((0, 1), (0, 0))).astype(dtype), 3)  # in the kernel's order
    pool._write(1, {"layer": (np.pad(a, ((0, 1), (0, 0))).astype(dtype), bt)}, {"layer": 3})
    pool.bind_rows([-1, 1, 1])
    got = step(Tensor(x)).asnumpy()
    assert not got[0].any() and not got[3].any()
    np.testing.assert_allclose(got[1:3], x[1:3] @ a.T @ b.T, rtol=1e-5, atol=1e-5)
    pool._write(1, {}, {})  # unloaded: rank 0
    assert not step(Tensor(x)).asnumpy().any()
    with pytest.raises(ValueError, match="sized for 4"):
        pool.bind_rows([0] * 5)


def test_pack_columns_puts_each_column_block_in_one_run():
    """host.pack_columns: a [max_rank, out] at full rank as blocks of 32 columns, each block's [max_rank, width]
    one run (a last block narrower); out <= 32 is the plain layout."""
    bt = np.arange(2 * 3 * 70).reshape(2, 3, 70)  # [slots, max_rank, out]: blocks of 32, 32 and 6 columns
    packed = host.pack_columns(bt, 3)
    assert packed.shape == bt.shape and packed.dtype == bt.dtype
    flat = packed.reshape(2, -1)
    np.testing.assert_array_equal(flat[:, :96].reshape(2, 3, 32), bt[..., :32])
    np.testing.assert_array_equal(flat[:, 96:192].reshape(2, 3, 32), bt[..., 32:64])
    np.testing.assert_array_equal(flat[:, 192:].reshape(2, 3, 6), bt[..., 64:])
    small = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(host.pack_columns(small, 3), small)


def test_pack_columns_keeps_a_slot_below_max_rank_in_one_run():
    """A slot of rank r in a pool of a higher max_rank: its r * out factors first, in column blocks of
    [r, width] (one run, which the kernel reads front to back), then the rows past r the same way; each slot
    at its own rank, none lost."""
    bt = np.arange(3 * 8 * 70).reshape(3, 8, 70)
    packed = host.pack_columns(bt, np.array([2, 8, 0])).reshape(3, -1)
    np.testing.assert_array_equal(packed[0, :64].reshape(2, 32), bt[0, :2, :32])
    np.testing.assert_array_equal(packed[0, 64:128].reshape(2, 32), bt[0, :2, 32:64])
    np.testing.assert_array_equal(packed[0, 128:140].reshape(2, 6), bt[0, :2, 64:])
    np.testing.assert_array_equal(packed[0, 140:140 + 6 * 32].reshape(6, 32), bt[0, 2:, :32])
    np.testing.assert_array_equal(packed[1], host.pack_columns(bt[1], 8).ravel())
    np.testing.assert_array_equal(packed[2], host.pack_columns(bt[2], 8).ravel())  # rank 0: the rest alone
    for slot in range(3):
        np.testing.assert_array_equal(np.sort(packed[slot]), bt[slot].ravel())


def test_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="lora_kernel must be"):
        lora_kernels.choose("punica")


@pytest.mark.skipif(not host.enabled(), reason="no C++ compiler: the host kernels are not built")
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("rows, seq, fan_in, fan_out, max_rank, row_slots", [
    (8, 1, 37, 83, 8, [0, 2, -1, 0, 2, 1, 3, 0]),  # vector tails, scattered rows, a rank-0 slot
    (32, 1, 96, 200, 16, [s % 4 for s in range(32)]),  # enough work for both threads, chunks and their tail
    (3, 7, 64, 48, 5, [3, -1, 0, 0]),  # rows of several tokens (blocks of 4 and their tails)
    (2, 1, 13, 7, 3, [-1, -1])])  # base rows only, below one vector
def test_fused_linear_kernel_matches_numpy(dtype, rows, seq, fan_in, fan_out, max_rank, row_slots):
    """host.linear_lora: the base product plus each row's adapter product, as linear + lora_delta compute them."""
    rng = np.random.default_rng(rows + seq)
    a, bt, ranks = pool_arrays(rng, slots=4, max_rank=max_rank, fan_in=fan_in, fan_out=fan_out,
                               ranks=(max_rank, max_rank - 1, 0, 1))
    a[a == 1e6] = 0  # beyond the ranks (float16 would make them inf; never read either way)
    a, bt = a.astype(dtype), bt.astype(dtype)
    x = rng.normal(size=(rows, seq, fan_in)).astype(np.float32)
    w = rng.normal(size=(fan_out, fan_in)).astype(np.float32)
    slots = np.array(row_slots, np.int32)
    want = x.astype(np.float64) @ w.T.astype(np.float64) + expected(x, a, bt, ranks, slots)
    bt = host.pack_columns(bt, ranks)
    for call in (host.linear_lora, ms.jit(host.linear_lora)):
        got = call(Tensor(x), Tensor(w), Tensor(a), Tensor(bt), Tensor(ranks), Tensor(slots)).asnumpy()
        assert got.shape == (rows, seq, fan_out) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # the separate kernels' numbers exactly, with a bias added before the adapters' products as a Linear does
    bias = rng.normal(size=(fan_out,)).astype(np.float32)
    got = host.linear_lora(Tensor(x), Tensor(w), Tensor(a), Tensor(bt), Tensor(ranks), Tensor(slots),
                           Tensor(bias)).asnumpy()
    unfused = host.lora_delta(Tensor(x), Tensor(a), Tensor(bt), Tensor(ranks), Tensor(slots),
                              host.linear(Tensor(x), Tensor(w)) + Tensor(bias)).asnumpy()
    np.testing.assert_array_equal(got, unfused)


@pytest.mark.skipif(not host.enabled(), reason="no C++ compiler: the host kernels are not built")
def test_fused_linear_kernel_gives_the_same_numbers_however_its_threads_ran():
    """host.linear_lora's two threads each start on one kind of work (the adapters' products, the base
    product's column chunks) and take what is left of the other's; a chunk gets its adapters' part from
    whichever ends last. Call after call on two threads, and on one, the numbers are the same (and lora_delta's
    over the base)."""
    rng = np.random.default_rng(7)
    a, bt, ranks = pool_arrays(rng, slots=8, max_rank=16, fan_in=256, fan_out=320, ranks=(16,) * 8)
    x = rng.normal(size=(32, 1, 256)).astype(np.float32)
    w = rng.normal(size=(320, 256)).astype(np.float32)
    slots = np.array([s % 8 for s in range(32)], np.int32)
    args = [Tensor(t) for t in (x, w, a, host.pack_columns(bt, ranks), ranks, slots)]
    want = host.lora_delta(args[0], args[2], args[3], args[4], args[5], host.linear(args[0], args[1])).asnumpy()
    library = ctypes.CDLL(host._library())
    try:
        for threads in (2, 1):
            library.set_threads(threads)
            for _ in range(10):
                np.testing.assert_array_equal(host.linear_lora(*args).asnumpy(), want)
    finally:
        library.set_threads(host.threads())


@pytest.mark.skipif(not host.enabled(), reason="no C++ compiler: the host kernels are not built")
@pytest.mark.parametrize("bias", [False, True])
def test_layer_fuses_the_base_product_for_few_rows(monkeypatch, bias):
    """A MultiLoraLinear over a Linear takes host.linear_lora for a decode step's rows (same output as the
    base layer plus lora_delta, bias included), and the separate kernels for more rows than HOST_LINEAR_ROWS."""
    from mindformers.models.common import layers
    pool = AdapterPool({"layer": (6, 5)}, max_num=2, max_rank=4, max_rows=80, kernel="host")
    layer = MultiLoraLinear(Linear(6, 5, bias=bias), pool, "layer")
    layer.set_train(False)
    rng = np.random.default_rng(3)
    layer.base.weight.set_data(Tensor(rng.normal(size=(5, 6)).astype(np.float32)))
    if bias:
        layer.base.bias.set_data(Tensor(rng.normal(size=(5,)).astype(np.float32)))
    a, b = rng.normal(size=(3, 6)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32)
    pool._write(1, {"layer": (np.pad(a, ((0, 1), (0, 0))), host.pack_columns(np.pad(b.T, ((0, 1), (0, 0))), 3))},
                {"layer": 3})
    calls = []
    real = host.linear_lora
    monkeypatch.setattr(host, "linear_lora", lambda *args: calls.append(1) or real(*args))
    for rows in (4, layers.HOST_LINEAR_ROWS + 1):
        calls.clear()
        pool.bind_rows([1, -1] * (rows // 2) + [1] * (rows % 2))
        x = rng.normal(size=(rows, 1, 6)).astype(np.float32)
        got = layer(Tensor(x)).asnumpy()
        base = x @ layer.base.weight.asnumpy().T + (layer.base.bias.asnumpy() if bias else 0)
        want = base + np.where(np.arange(rows)[:, None, None] % 2 == 0, x @ a.T @ b.T, 0)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert len(calls) == (1 if rows <= layers.HOST_LINEAR_ROWS else 0)
