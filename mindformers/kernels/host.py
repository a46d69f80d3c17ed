"""The host (CPU) kernels of ``host_kernels.cc``: built once per machine with the system C++ compiler, called
through MindSpore's AOT custom operators.

Why: on CPU, MindSpore runs every elementwise op as its own kernel over the whole tensor, so an AdamW step
(about 15 ops per parameter) reads and writes each tensor ~15 times; a fused loop does it once (SmolLM2's
49,152 x 576 embedding: 350 ms -> ~60 ms for the update, 136 -> ~15 ms for its squared norm). And in a compiled
training step each op keeps its own buffers for the life of the graph, so a chain of elementwise ops costs
memory per op: SwiGLU and rotary as one kernel each way took an 8-layer SmolLM2 step (batch 8 x 128) from
2,806 to 2,203 MB above the model.

The library is compiled at set-up (``python -m mindformers.kernels``, which ``make setup`` runs) or at first
use, into ``$MINDFORMERS_CACHE/kernels`` (default ``~/.cache/mindformers/kernels``), named by a hash of the
source, the compiler and the flags, so an edit or another machine builds its own copy. Without a compiler
(or with ``MINDFORMERS_HOST_KERNELS=0``) the callers keep their generic MindSpore-ops path, which is also the
path on GPU/Ascend; tests compare the two.
"""
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import ops

from ..utils import logger

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "host_kernels.cc")
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd", "-std=c++17", "-shared", "-fPIC", "-pthread"]
LIBS = ["-lmvec"]  # glibc's vector math (expf eight lanes at a time)
ENV_SWITCH = "MINDFORMERS_HOST_KERNELS"


def cache_dir() -> str:
    root = os.environ.get("MINDFORMERS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mindformers")
    return os.path.join(root, "kernels")


def _compiler() -> Optional[str]:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def _library_name(compiler: str) -> str:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    with open(SOURCE, "rb") as f:
        source = f.read()
    digest = hashlib.sha256(source + " ".join(FLAGS + LIBS).encode() + version.encode() + _cpu_signature().encode())
    return f"host_kernels-{digest.hexdigest()[:16]}.so"


def _cpu_signature() -> str:
    """The CPU's model and feature flags (-march=native builds for them)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def build(verbose: bool = False) -> str:
    """Compile the library if this machine has no current copy; returns its path.

    Raises:
        RuntimeError: no C++ compiler, or the compiler failed (its output is in the message).
    """
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (looked for $CXX, g++, c++, clang++); the host kernels need one")
    path = os.path.join(cache_dir(), _library_name(compiler))
    if os.path.exists(path):
        if verbose:
            print(f"up to date: {path}")
        return path
    os.makedirs(cache_dir(), exist_ok=True)
    # compile beside the target and rename: processes building at once (msrun) each write their own file
    fd, tmp = tempfile.mkstemp(prefix=".host_kernels.", suffix=".so", dir=cache_dir())
    os.close(fd)
    try:
        cmd = [compiler, *FLAGS, SOURCE, "-o", tmp, *LIBS]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"compiling the host kernels failed ({' '.join(cmd)}):\n{done.stderr[-4000:]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if verbose:
        print(f"built {path}")
    return path


def threads() -> int:
    """The threads a host kernel may use: ``OMP_NUM_THREADS`` as the process was started with it, else the CPUs
    this process may run on. Importing MindSpore sets ``OMP_NUM_THREADS`` to 1 in the C environment (which
    Python's ``os.environ`` does not see), so the library would read 1 there: it is told this number instead."""
    try:
        count = int(os.environ.get("OMP_NUM_THREADS", "0"))
    except ValueError:
        count = 0
    if count < 1:
        count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return count


@functools.lru_cache(maxsize=None)
def _library() -> Optional[str]:
    try:
        path = build()
    except (RuntimeError, OSError) as err:
        logger.warning("host kernels unavailable, using MindSpore's generic ops (slower on CPU): %s", err)
        return None
    # MindSpore's custom ops open the library by this path, so they share this copy's thread count
    ctypes.CDLL(path).set_threads(threads())
    return path


def enabled() -> bool:
    """Whether graphs built now should call the host kernels: the device is the CPU and the library built."""
    return ms.get_context("device_target") == "CPU" and os.environ.get(ENV_SWITCH, "1") != "0" and \
        _library() is not None


def _flag_shape(*shapes):
    return [1]


def _float32(*dtypes):
    return ms.float32


def _cross_entropy_shapes(logits, labels, scale):
    return [1], logits


def _cross_entropy_types(logits, labels, scale):
    return ms.float32, ms.float32


def _rms_norm_shapes(x, w, eps):
    return x, x[:-1]


def _two_float32(*dtypes):
    return ms.float32, ms.float32


def _rms_norm_grad_shapes(dy, x, w, rstd):
    return x, w


def _lora_delta_shape(x, a, bt, ranks, row_slots, base=None):
    return x[:-1] + [bt[-1]]


def _linear_shape(x, w, *factors):  # linear's, and linear_lora's (whose factors follow)
    return x[:-1] + [w[0]]


def _first_shape(first, *others):
    return first


def _swiglu_grad_shapes(dy, g, u):
    return g, u


@functools.lru_cache(maxsize=None)
def _primitive(name: str, side_effect: bool = False, out_shape=_flag_shape, out_dtype=_float32,
               bprop=None) -> ops.Custom:
    """The AOT op of kernel ``name`` (one per process: graphs share it), differentiated by ``bprop(*inputs,
    out, dout)`` if given."""
    op = ops.Custom(f"{_library()}:{name}", out_shape=out_shape, out_dtype=out_dtype, func_type="aot", bprop=bprop)
    if side_effect:  # writes its Parameter inputs: kept (and ordered) although its output is unused
        op.add_prim_attr("side_effect_mem", True)
    return op


def adamw_update(param, grad, exp_avg, exp_avg_sq, scalars):
    """One fused AdamW step on ``param`` and its moments, in place (see host_kernels.cc for the formula).

    All five tensors must be float32; a 0-d ``param`` is not supported (callers update those with generic ops).

    Args:
        scalars: float32 [8] ``(lr, beta1, beta2, eps, 1 - beta1^t, sqrt(1 - beta2^t), decay, grad_scale)``.
    Returns:
        a [1] tensor (1.0) that depends on the update.
    """
    return _primitive("adamw_update", side_effect=True)(param, grad, exp_avg, exp_avg_sq, scalars)


def squared_sum(x):
    """``sum(x ** 2)`` as a 0-d float32 tensor, accumulated in double in one pass."""
    return _primitive("squared_sum")(x.astype(ms.float32)).reshape(())


def softmax_cross_entropy(logits, labels, scale):
    """Summed cross entropy of ``logits`` rows against ``labels`` and its gradient, in one pass per row.

    Args:
        logits: float32 [rows, vocab]; labels: int32 [rows], negative (-100) where ignored;
        scale: float32 [1], the gradient's factor (1 / scored rows for a mean loss).
    Returns:
        ``(loss_sum [1], grad [rows, vocab])`` with ``grad = scale * (softmax - onehot)``, 0 on ignored rows.
    """
    return _primitive("softmax_cross_entropy", out_shape=_cross_entropy_shapes,
                      out_dtype=_cross_entropy_types)(logits, labels, scale)


def softmax_cross_entropy_(logits, labels, scale):
    """:func:`softmax_cross_entropy` writing the gradient over ``logits`` (a buffer nothing else reads: the
    head product's output); returns ``loss_sum [1]``, which the caller makes the gradient's readers depend
    on (``ops.depend(logits, loss_sum)``)."""
    return _primitive("softmax_cross_entropy", side_effect=True)(logits, labels, scale)


def rms_norm(x, weight, eps):
    """RMSNorm over the last axis in one pass: ``(weight * (x * r), r)`` with ``r = 1 / sqrt(mean(x^2) + eps)``.

    Args:
        x: float32 [..., dim]; weight: float32 [dim]; eps: float32 [1].
    Returns:
        ``(y [..., dim], r [...])``; ``r`` is what :func:`rms_norm_grad` needs.
    """
    return _primitive("rms_norm", out_shape=_rms_norm_shapes, out_dtype=_two_float32)(x, weight, eps)


def rms_norm_grad(dy, x, weight, rstd):
    """Gradients of :func:`rms_norm`: ``(dx [..., dim], dweight [dim])``, float32."""
    return _primitive("rms_norm_grad", out_shape=_rms_norm_grad_shapes, out_dtype=_two_float32)(
        dy, x, weight, rstd)


def softmax_bias(scores, bias, scale):
    """Attention probabilities ``softmax(scale * scores + bias)`` over the last axis, in one pass per row.

    Args:
        scores: float32 [batch, heads, q, k]; bias: float32 [batch, 1, q, k] (the mask, shared by the
        heads); scale: float32 [1].
    Returns:
        float32 [batch, heads, q, k].
    """
    return _primitive("softmax_bias", out_shape=_first_shape)(scores, bias, scale)


def softmax_bias_grad(dprobs, probs, scale):
    """The gradient of :func:`softmax_bias` with respect to ``scores``: ``scale * p * (dp - sum(dp * p))``."""
    return _primitive("softmax_bias_grad", out_shape=_first_shape)(dprobs, probs, scale)


def _swapped_shape(x):
    return [x[0], x[2], x[1], x[3]]


def _same_dtype(x):
    return x


def swap_axes(x):
    """``x.swapaxes(1, 2)`` of a 4-D float32, float16 or bfloat16 tensor, copied row by row (no Transpose
    kernel); it is its own gradient."""
    return _primitive("swap_axes", out_shape=_swapped_shape, out_dtype=_same_dtype)(x)


LORA_COLUMNS = 32  # host_kernels.cc's COLUMNS: the width of bt's column blocks


def pack_columns(bt: np.ndarray, ranks) -> np.ndarray:
    """``bt [..., max_rank, out]`` in the host LoRA kernels' column blocks at each slot's own rank (same
    shape and dtype; a permutation of each ``[max_rank, out]``): its first ``rank`` rows as blocks of
    ``LORA_COLUMNS`` columns one after the other, block ``c`` (columns ``o0 = c * LORA_COLUMNS``, up to
    ``LORA_COLUMNS`` of them) a ``[rank, width]`` run at ``o0 * rank``, then the rows past the rank the same
    way (never read). The kernels go over the output columns a block at a time, so they read a slot's
    ``rank * out`` factors front to back as one run, whatever ``max_rank`` is. ``ranks``: an int, or one per
    ``[max_rank, out]`` (the leading shape, e.g. ``[slots]``); the ranks the kernel is given with it."""
    bt = np.asarray(bt)
    max_rank, out = bt.shape[-2:]
    lead = bt.shape[:-2]
    ranks = np.broadcast_to(np.asarray(ranks), lead)
    packed = np.empty(lead + (max_rank * out,), bt.dtype)
    for index in np.ndindex(*lead):
        rank = int(np.clip(ranks[index], 0, max_rank))
        packed[index] = np.concatenate([_column_blocks(bt[index][:rank]), _column_blocks(bt[index][rank:])])
    return packed.reshape(bt.shape)


def _column_blocks(rows: np.ndarray) -> np.ndarray:
    """``rows [r, out]`` as ``[r, width]`` blocks of ``LORA_COLUMNS`` columns, one after the other, flat."""
    return np.concatenate([rows[:, o0:o0 + LORA_COLUMNS].ravel() for o0 in range(0, rows.shape[1], LORA_COLUMNS)])


def lora_delta(x, a, bt, ranks, row_slots, base=None):
    """Each row's own LoRA product (the serving engine's adapter pool; see serving/lora_kernels.py).

    Args:
        x: float32 [rows, ..., in]; a: [slots, max_rank, in] and bt: [slots, max_rank, out] in column blocks
            (``pack_columns`` at ``ranks``), both float32 or both float16 (widened to float32 as they are read);
        ranks: int32 [slots]; row_slots: int32 [>= rows], the slot of each row, negative for none;
        base: float32 [rows, ..., out] or None: added to the product (in the kernel, not as a graph op).
    Returns:
        float32 [rows, ..., out].
    """
    op = _primitive("lora_delta", out_shape=_lora_delta_shape)
    if base is None:
        return op(x, a, bt, ranks, row_slots)
    return op(x, a, bt, ranks, row_slots, base)


def _linear_bprop(x, weight, out, dout):
    rows = dout.reshape(-1, dout.shape[-1])
    return (ops.MatMul()(rows, weight).reshape(x.shape),
            ops.MatMul(transpose_a=True)(rows, x.reshape(-1, x.shape[-1])))


def linear(x, weight):
    """``x @ weight.T`` for a few rows (a decode step): float32 x [..., in], weight [out, in]; returns float32
    [..., out]. Dot products along ``in`` whose blocks keep their sums in registers; MindSpore's MatMul packs
    the weight on every call (~1.7x slower for 32 rows of SmolLM2's layers). Differentiable (the gradient is
    MindSpore's two matmuls)."""
    return _primitive("linear", out_shape=_linear_shape, bprop=_linear_bprop)(x, weight)


def linear_lora(x, weight, a, bt, ranks, row_slots, bias=None):
    """``lora_delta(x, a, bt, ranks, row_slots, base=linear(x, weight) + bias)`` in one kernel, for few rows (a
    served decode step's adapted layer), one launch per layer: one thread starts on the adapters' products
    (bound by reading the factors), the other on the base product (bound by arithmetic), each then takes what
    is left of the other's; the same numbers as the separate kernels. Arguments as ``linear``'s
    and ``lora_delta``'s (x float32 [rows, ..., in], weight float32 [out, in], bias float32 [out] or None);
    returns float32 [rows, ..., out]. Not differentiable (serving only)."""
    op = _primitive("linear_lora", out_shape=_linear_shape)
    if bias is None:
        return op(x, weight, a, bt, ranks, row_slots)
    return op(x, weight, a, bt, ranks, row_slots, bias)


def cache_write(cache, values, index):
    """Write ``values`` [b, heads, s, dim] into the Parameter ``cache`` [rows, heads, slots, dim] in place at
    ``index`` [b, heads, s, 3] int32 (row, head, slot), as ``ops.scatter_nd_update`` but touching only the
    written slots. float32, float16 or bfloat16 (values of the cache's dtype).

    Returns:
        a [1] tensor (1.0) that depends on the write.
    """
    return _primitive("cache_write", side_effect=True)(cache, values, index)


def embedding_grad_add_(grad, ids, d):
    """``grad[ids[i]] += d[i]`` in place: an embedding lookup's gradient added into a table's gradient (a buffer
    nothing else reads yet) without a dense [vocab, hidden] tensor of its own. Ids outside ``[0, vocab)`` are
    skipped, as the lookup's own gradient drops them.

    Args:
        grad: float32 [vocab, hidden]; ids: int32 or int64, any shape; d: float32 [*ids.shape, hidden].
    Returns:
        a [1] tensor (1.0) that depends on the write; read ``grad`` through ``ops.depend(grad, it)``.
    """
    return _primitive("embedding_grad_add", side_effect=True)(grad, ids, d)


def swiglu(gate, up):
    """``silu(gate) * up`` in one pass (SwiGLU's gate, Shazeer 2020). float32, any (equal) shapes.

    Returns:
        float32, ``gate``'s shape.
    """
    return _primitive("swiglu", out_shape=_first_shape)(gate, up)


def swiglu_grad(dy, gate, up):
    """The gradients of :func:`swiglu`: ``(dy * up * sig(gate) * (1 + gate * (1 - sig(gate))), dy * silu(gate))``.

    Returns:
        ``(d gate, d up)``, float32, the shapes of ``gate`` and ``up``.
    """
    return _primitive("swiglu_grad", out_shape=_swiglu_grad_shapes, out_dtype=_two_float32)(dy, gate, up)


def rotary_fits(x_shape, table_shape) -> bool:
    """Whether :func:`rotary` takes these shapes: x [batch, heads, seq, dim] (dim even) with cos/sin tables
    [batch or 1, 1, seq, dim]."""
    return len(x_shape) == 4 and len(table_shape) == 4 and x_shape[3] % 2 == 0 and \
        table_shape[0] in (1, x_shape[0]) and table_shape[1] == 1 and tuple(table_shape[2:]) == tuple(x_shape[2:])


def rotary(x, cos, sin):
    """Rotary position embedding in the "rotate half" layout, ``x * cos + rotate_half(x) * sin``, in one pass.

    Args:
        x: float32 [batch, heads, seq, head_dim] (head_dim even); cos, sin: float32 [batch or 1, 1, seq,
            head_dim] (see :func:`rotary_fits`).
    Returns:
        float32, ``x``'s shape.
    """
    return _primitive("rotary", out_shape=_first_shape)(x, cos, sin)


def rotary_grad(dy, cos, sin):
    """The gradient of :func:`rotary` with respect to ``x``: ``dy * cos + R^T(dy * sin)``, ``R^T([w1, w2]) =
    [w2, -w1]`` (the rotation by minus the angle)."""
    return _primitive("rotary_grad", out_shape=_first_shape)(dy, cos, sin)
