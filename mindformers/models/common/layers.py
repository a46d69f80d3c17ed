"""Building blocks shared by the models: linear layers, embeddings, norms, rotary positions, attention.

Parameters carry Hugging Face's names (``weight``, ``bias``) so checkpoints map 1:1. Everything here uses
``mindspore.ops`` functions that have kernels on CPU, GPU and Ascend (several ``mint`` kernels are missing
on CPU, see docs/mindspore_cpu.md). Parameters are created with cheap placeholder values; a model's
``init_weights`` fills them, or a checkpoint overwrites them.
"""
import math
from typing import Optional

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import One, Zero
from mindspore.ops import operations as P

from ...kernels import host

MS_DTYPES = {"float32": ms.float32, "float16": ms.float16, "bfloat16": ms.bfloat16}


def cast(x, dtype):
    """``x.astype(dtype)``, skipped when it already has that dtype (known when a graph is compiled, so a
    float32 model has no Cast kernels at all: ~300 fewer kernel launches per decode step on SmolLM2)."""
    return x if x.dtype == dtype else x.astype(dtype)


# WARNING: a few of mindspore.ops' functions are slow to compile: their argument checks are Python that is
# parsed into every graph calling them. Measured on MindSpore 2.10 (CPU), per call site: ops.arange ~0.6 s,
# ops.cross_entropy ~1 s, ops.full / ops.fill / ops.full_like ~0.1 s, where the primitives below cost ~0.02 s.
# A one-layer tiny Llama's evaluation graph (loss included) compiled in 3.5 s with them, 1.1 s with these
# (tests/models/test_compile_cost.py keeps them out; bench/compile.py measures SmolLM2's first steps).
_RANGE = P.Range()


def arange(start: int, stop: int, dtype=ms.int32):
    """``[start, stop)`` as a 1-D tensor of ``dtype``: ``ops.arange`` without its compile cost."""
    return _RANGE(start, stop, 1).astype(dtype)


def full(shape, value, dtype):
    """A tensor of ``shape`` filled with ``value``: ``ops.full`` without its compile cost."""
    return ops.zeros(shape, dtype) + value


def read_now(weight):
    """``weight``'s value, read at this point of a compiled function rather than where it is next used.

    MindSpore reads a Parameter where an op uses it (a ``Load`` at the side-effect state of that point), and
    copies every read of a Parameter read at two states (its ``OrderEnforcer`` puts a ``TensorMove`` after
    each). A tied head reads the embedding table after the KV cache writes, the embedding reads it before:
    two copies of the table per step (113 MB each for SmolLM2, ~15 ms of a ~75 ms decode step). Read at the
    top of the step, beside the embedding's own read, both are the same ``Load``. The reshape is what makes
    the read happen here; it is free (a no-op kernel).
    """
    return weight.reshape(weight.shape)


def _placeholder(shape, dtype, value: float = 0.0) -> Tensor:
    # Lazily initialised: no memory is filled until the tensor is used or overwritten by set_data.
    return Tensor(shape=shape, dtype=dtype, init=One() if value == 1.0 else Zero())


# Rows (tokens) up to which a Linear outside training runs the host kernel (CPU, float32): a decode step's
# batch. MindSpore's MatMul packs the weight on every call, which a few rows do not amortise (32 rows of
# SmolLM2's layers: ~1.7x the host kernel's time; from ~128 rows MindSpore's is the faster).
HOST_LINEAR_ROWS = 64


def few_rows_on_host(x, weight, use_host: bool) -> bool:
    """Whether ``x [..., in] @ weight [out, in]^T`` goes to a host kernel: ``use_host`` (a layer outside
    training on a CPU with the kernels: ``host_linear and not self.training``) and few float32 rows (a decode
    step; see ``HOST_LINEAR_ROWS``)."""
    return use_host and x.size // x.shape[-1] <= HOST_LINEAR_ROWS and x.dtype == ms.float32 and \
        weight.dtype == ms.float32


def product_nt(x, weight, matmul_nt, use_host: bool):
    """``x [rows, in] @ weight [out, in]^T``: by the host kernel where ``few_rows_on_host``, else by
    ``matmul_nt`` (the layer's MatMul primitive, which a strategy shards). Every layer holding a Linear's
    weight (the tuners' too) takes its product here, so a tuned layer and its base round alike."""
    if few_rows_on_host(x, weight, use_host):
        return host.linear(x, weight)
    return matmul_nt(x, weight)


class Linear(nn.Cell):
    """``y = x W^T + b`` with ``W`` stored ``[out_features, in_features]`` like ``torch.nn.Linear``."""

    whole_product = True  # x W^T is this rank's whole output (subclasses that split it say False)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=ms.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(_placeholder((out_features, in_features), dtype), name="weight")
        self.bias = Parameter(_placeholder((out_features,), dtype), name="bias") if bias else None
        # primitives, not functions, so that mindformers.parallel.shard can give them strategies
        self.matmul = ops.MatMul(transpose_b=True)
        self.add = ops.Add()
        self.host_linear = host.enabled()

    def construct(self, x):
        shape = x.shape
        y = product_nt(x.reshape(-1, shape[-1]), self.weight, self.matmul, self.host_linear and not self.training)
        if self.bias is not None:
            y = self.add(y, self.bias)
        return y.reshape(shape[:-1] + (self.out_features,))


class Conv1D(nn.Cell):
    """GPT-2's "Conv1D": a linear layer whose weight is stored ``[in_features, out_features]``."""

    def __init__(self, in_features: int, out_features: int, dtype=ms.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(_placeholder((in_features, out_features), dtype), name="weight")
        self.bias = Parameter(_placeholder((out_features,), dtype), name="bias")
        self.matmul = ops.MatMul()  # primitives: mindformers.parallel.shard gives them strategies
        self.add = ops.Add()

    def construct(self, x):
        shape = x.shape
        y = self.add(self.matmul(x.reshape(-1, shape[-1]), self.weight), self.bias)
        return y.reshape(shape[:-1] + (self.out_features,))


class Embedding(nn.Cell):
    """Token (or position) embedding table ``[num_embeddings, dim]``."""

    def __init__(self, num_embeddings: int, dim: int, dtype=ms.float32):
        super().__init__()
        self.weight = Parameter(_placeholder((num_embeddings, dim), dtype), name="weight")
        self.gather = ops.Gather()  # a primitive: mindformers.parallel.shard gives it a strategy

    def construct(self, ids):
        return self.gather(self.weight, ids, 0)


class RMSNorm(nn.Cell):
    """Root-mean-square norm (Zhang & Sennrich 2019), computed in float32 as Hugging Face Llama does."""

    def __init__(self, dim: int, eps: float = 1e-6, dtype=ms.float32):
        super().__init__()
        self.eps = eps
        self.weight = Parameter(_placeholder((dim,), dtype, 1.0), name="weight")
        self.fused = HostRMSNorm(eps) if host.enabled() else None  # float32 on CPU: one kernel each way

    def construct(self, x):
        if self.fused is not None and x.dtype == ms.float32 and self.weight.dtype == ms.float32:
            return self.fused(x, self.weight)[0]
        dtype = x.dtype
        x = cast(x, ms.float32)
        x = x * ops.rsqrt(ops.square(x).mean(-1, keep_dims=True) + self.eps)
        return self.weight * cast(x, dtype)


class HostRMSNorm(nn.Cell):
    """RMSNorm by the host kernels, forward and backward (``RMSNorm``'s path for float32 on CPU).

    MindSpore's CPU kernels keep buffers the size of their tensors for a compiled graph's life, and RMSNorm
    from primitive ops is ~5 of them forward and ~10 backward: ~50 MB per norm of a [1024, 576] training
    batch (0.9 of 2.8 GB in an 8-layer SmolLM2-shaped step). ``construct(x, weight)`` returns ``(y, r)``;
    ``r = 1 / rms`` per row is what the bprop needs.
    """

    def __init__(self, eps: float):
        super().__init__()
        self.eps = Tensor(np.array([eps], np.float32))

    def construct(self, x, weight):
        return host.rms_norm(x, weight, self.eps)

    def bprop(self, x, weight, out, dout):
        return host.rms_norm_grad(dout[0], x, weight, out[1])


class LayerNorm(nn.Cell):
    """LayerNorm with ``weight``/``bias`` names (MindSpore's ``nn.LayerNorm`` calls them gamma/beta)."""

    def __init__(self, dim: int, eps: float = 1e-5, dtype=ms.float32):
        super().__init__()
        self.eps = eps
        self.weight = Parameter(_placeholder((dim,), dtype, 1.0), name="weight")
        self.bias = Parameter(_placeholder((dim,), dtype), name="bias")

    def construct(self, x):
        mean = x.mean(-1, keep_dims=True)
        var = (x - mean).pow(2).mean(-1, keep_dims=True)
        return (x - mean) * ops.rsqrt(var + self.eps) * self.weight + self.bias


# ----------------------------------------------------------------------------------------- rotary
ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_inverse_frequencies(head_dim: int, theta: float, scaling: Optional[dict] = None) -> np.ndarray:
    """Inverse frequencies of rotary embeddings (Su et al. 2021), with linear, Llama 3 or YaRN scaling.

    Returns:
        float32 array ``[head_dim // 2]``.
    """
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
    if scaling is None:
        return inv_freq.astype(np.float32)
    kind = scaling["rope_type"]
    factor = float(scaling["factor"])
    if kind == "linear":
        return (inv_freq / factor).astype(np.float32)
    if kind == "yarn":
        return _yarn_inverse_frequencies(head_dim, theta, factor, scaling)
    # llama3: long wavelengths are divided by `factor`, short ones kept, the band between interpolated.
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_context = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_context / high) & (wavelen <= old_context / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def _yarn_inverse_frequencies(dim: int, theta: float, factor: float, scaling: dict) -> np.ndarray:
    # YaRN (Peng et al. 2023), as transformers' _compute_yarn_parameters: dimensions that rotate fewer than
    # beta_slow times over the original context are interpolated (divided by factor), more than beta_fast
    # times extrapolated (kept), with a linear ramp between.
    old_context = float(scaling["original_max_position_embeddings"])
    beta_fast, beta_slow = float(scaling.get("beta_fast") or 32), float(scaling.get("beta_slow") or 1)

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(old_context / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a division by zero
    pos_freqs = theta ** (np.arange(0, dim, 2).astype(np.float32) / dim)
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq.astype(np.float32)


def rope_attention_factor(scaling: Optional[dict]) -> float:
    """The factor YaRN multiplies cos and sin by (1 for the other rope types)."""
    if scaling is None or scaling["rope_type"] != "yarn":
        return 1.0
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    factor, mscale, mscale_all_dim = float(scaling["factor"]), scaling.get("mscale"), scaling.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        return _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
    return _yarn_mscale(factor)


def check_rope_scaling(scaling: Optional[dict], where: str) -> Optional[dict]:
    """Normalise a ``rope_scaling`` dict (``type`` -> ``rope_type``; "default" -> None) and check its keys."""
    if scaling is None:
        return None
    scaling = dict(scaling)
    rope_type = scaling.pop("rope_type", scaling.pop("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"{where}: rope_scaling rope_type must be one of {ROPE_TYPES}, found {rope_type!r}")
    if rope_type == "default":
        return None
    needed = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                                "original_max_position_embeddings"),
              "yarn": ("factor", "original_max_position_embeddings")}[rope_type]
    missing = [k for k in needed if scaling.get(k) is None]
    if missing:
        raise ValueError(f"{where}: rope_scaling of rope_type {rope_type!r} needs {list(needed)}; missing {missing}")
    return {"rope_type": rope_type, **scaling}


class RotaryEmbedding(nn.Cell):
    """cos/sin tables for given positions, in the "rotate half" layout of Hugging Face Llama (YaRN scales
    both by its attention factor)."""

    def __init__(self, head_dim: int, theta: float, scaling: Optional[dict] = None):
        super().__init__()
        self.inv_freq = Tensor(rope_inverse_frequencies(head_dim, theta, scaling))
        self.attention_factor = rope_attention_factor(scaling)

    def construct(self, position_ids):
        # position_ids [batch, seq] -> cos, sin [batch, 1, seq, head_dim]
        freqs = position_ids.astype(ms.float32).expand_dims(-1) * self.inv_freq
        emb = ops.cat((freqs, freqs), -1)
        cos, sin = ops.cos(emb).expand_dims(1), ops.sin(emb).expand_dims(1)
        if self.attention_factor != 1.0:
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        return cos, sin


def rotate_half(x):
    half = x.shape[-1] // 2
    return ops.cat((-x[..., half:], x[..., :half]), -1)


class HostRotary(nn.Cell):
    """:func:`apply_rotary` and its gradient by the host kernels (CPU; built where ``host.enabled()``).

    Why: MindSpore's CPU kernels keep a buffer per op instance for the life of a compiled graph; the generic
    rotation is seven ops (two slices, Neg, Concat, two Muls, Add) forward and as many backward, each the
    size of q or k. The tables get zero gradients: they are functions of the positions, nothing trains them.
    """

    def construct(self, x, cos, sin):
        return host.rotary(x, cos, sin)

    def bprop(self, x, cos, sin, out, dout):
        return host.rotary_grad(dout, cos, sin), ops.zeros_like(cos), ops.zeros_like(sin)


def apply_rotary(x, cos, sin, fused=None):
    """Rotate ``x`` [batch, heads, seq, head_dim] by the angles whose cos/sin [batch or 1, 1, seq, head_dim]
    are given.

    Args:
        fused: a :class:`HostRotary` to compute it with when ``x`` and the tables are float32 (settled when
            the graph compiles), or None for the generic ops.
    """
    if fused is not None and x.dtype == ms.float32 and cos.dtype == ms.float32 and sin.dtype == ms.float32 \
            and cos.shape == sin.shape and host.rotary_fits(x.shape, cos.shape):
        return fused(x, cos, sin)
    return x * cast(cos, x.dtype) + rotate_half(x) * cast(sin, x.dtype)


def apply_rotary_interleaved(x, cos, sin):
    """Rotary embedding for weights laid out in interleaved pairs ``(x0, x1), (x2, x3), ...`` (DeepSeek);
    the output is in the "rotate half" layout, as transformers' ``apply_rotary_pos_emb_interleave`` gives."""
    half = x.shape[-1] // 2
    pairs = x.reshape(x.shape[:-1] + (half, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    cos, sin = cast(cos[..., :half], x.dtype), cast(sin[..., :half], x.dtype)
    return ops.cat((even * cos - odd * sin, odd * cos + even * sin), -1)


def causal_lm_loss(logits, labels):
    """Mean next-token cross entropy: position t predicts label t+1; label -100 is ignored.

    Args:
        logits: [batch, seq, vocab]; labels: [batch, seq] int, or [batch, seq + 1] (MindFormers' pre-training
            rows: the inputs were ``row[:-1]``, so every position has a target).
    """
    vocab = logits.shape[-1]
    if labels.shape[1] == logits.shape[1] + 1:
        shift_logits = logits.reshape(-1, vocab).astype(ms.float32)
    else:
        shift_logits = logits[:, :-1, :].reshape(-1, vocab).astype(ms.float32)
    shift_labels = labels[:, 1:].reshape(-1).astype(ms.int32)
    return _mean_cross_entropy(shift_logits, shift_labels)


def _mean_cross_entropy(logits, labels):
    """Cross entropy averaged over labels != -100; 0 (not NaN) when every label is ignored, so a batch
    without scored tokens (a data-parallel filler batch) adds nothing to a step."""
    scored = labels != -100
    target = ops.where(scored, labels, ops.zeros_like(labels)).reshape(-1, 1)
    picked = ops.gather_elements(ops.log_softmax(logits, -1), 1, target).reshape(-1)  # log p(label)
    total = -(picked * scored.astype(logits.dtype)).sum()
    return total / ops.maximum(scored.sum().astype(ms.float32), 1.0)


def sequence_classification_loss(logits, labels, num_labels: int, problem_type: Optional[str]):
    """Loss of a classification head, chosen like Hugging Face: regression for one label, cross entropy
    for integer labels, binary cross entropy for multi-label float targets."""
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif labels.dtype in (ms.int32, ms.int64):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "regression":
        return ops.mse_loss(logits.reshape(-1).astype(ms.float32), labels.reshape(-1).astype(ms.float32))
    if problem_type == "single_label_classification":
        # label -100: a filler row of an uneven last data-parallel batch
        return _mean_cross_entropy(logits.reshape(-1, num_labels).astype(ms.float32), labels.reshape(-1).astype(ms.int32))
    target = labels.astype(ms.float32)
    ones = ops.ones_like(target)
    return ops.binary_cross_entropy_with_logits(logits.astype(ms.float32), target, ones, ones)


def last_token_pool(hidden, input_ids, pad_token_id: Optional[int]):
    """Pick each row's last non-padding position, as Hugging Face's sequence-classification heads do.

    Args:
        hidden: [batch, seq, dim]; input_ids: [batch, seq].
    Returns:
        [batch, dim]
    """
    batch, seq = input_ids.shape
    if pad_token_id is None:
        index = full((batch,), seq - 1, ms.int32)
    else:
        # rightmost token that is not padding (works for left and right padding)
        positions = arange(0, seq).reshape(1, seq).broadcast_to((batch, seq))
        index = ops.argmax(ops.where(input_ids != pad_token_id, positions, ops.zeros_like(positions) - 1), -1)
        index = index.astype(ms.int32)
    return hidden[arange(0, batch), index]


def default_position_ids(attention_mask, batch: int, seq: int, query_slots=None):
    """Positions counted over real tokens only, so a left-padded row starts at position 0 on its first
    real token (as Hugging Face's generate does) and gives the same result as the unpadded row.

    Args:
        attention_mask: [batch, k_len] (1 = real token), or None with ``query_slots`` None too.
        query_slots: [batch, seq] slots of the queries among the ``k_len`` keys (KV cache), or None when
            the queries are the keys.
    Returns:
        int32 [batch, seq]
    """
    if attention_mask is None:
        return arange(0, seq).reshape(1, seq).broadcast_to((batch, seq))
    cumulative = ops.cumsum(attention_mask.astype(ms.int32), 1) - 1
    if query_slots is not None:
        cumulative = ops.gather_elements(cumulative, 1, query_slots.astype(ms.int32))
    return ops.maximum(cumulative, 0)


# ------------------------------------------------------------------------------------------- heads
_MATMUL_NT = ops.MatMul(transpose_b=True)


def make_lm_head(config) -> Optional[Linear]:
    """The output projection, or None when it is tied to the input embedding."""
    if config.tie_word_embeddings:
        return None
    return Linear(config.hidden_size, config.vocab_size, False, MS_DTYPES[config.dtype])


class LinearCrossEntropy(nn.Cell):
    """Mean cross entropy of ``hidden @ weight.T`` against labels, whose forward pass also computes the
    gradients (Liger Kernel's fused linear cross entropy): the [tokens, vocab] logits are one buffer that
    the host kernel turns into their gradient, never an autodiff node (MindSpore's own ops made ~10 passes
    over them: 0.46 of a 2-layer SmolLM2 step's 2.1 s). For training on CPU (``host.enabled()``); the
    loss equals ``causal_lm_loss`` on the logits.

    ``construct(hidden [tokens, hidden_size], weight [vocab, hidden_size], labels [tokens] int32, -100
    ignored)`` returns ``(loss, d loss/d hidden, d loss/d weight)``; the bprop scales the last two.
    """

    def __init__(self):
        super().__init__()
        self.matmul_nt = ops.MatMul(transpose_b=True)
        self.matmul = ops.MatMul()
        self.matmul_tn = ops.MatMul(transpose_a=True)

    def construct(self, hidden, weight, labels):
        scored = ops.maximum((labels >= 0).astype(ms.float32).sum(), 1.0)
        scale = (1.0 / scored).reshape((1,))
        logits = self.matmul_nt(hidden, weight)  # [tokens, vocab]
        loss_sum = host.softmax_cross_entropy_(logits, labels, scale)  # the gradient over the logits, in place
        grad = ops.depend(logits, loss_sum)  # read after the kernel wrote it
        return (loss_sum * scale).reshape(()), self.matmul(grad, weight), self.matmul_tn(grad, hidden)

    def bprop(self, hidden, weight, labels, out, dout):
        scale = dout[0]
        return out[1] * scale, out[2] * scale, ops.zeros_like(labels)


def shifted_labels(labels, seq: int):
    """Next-token targets [batch * seq]: position t's label t+1, -100 after the last (as transformers pads
    them), or ``labels[:, 1:]`` for [batch, seq + 1] labels (MindFormers' pre-training rows)."""
    if labels.shape[1] == seq + 1:
        return labels[:, 1:].reshape(-1).astype(ms.int32)
    tail = full((labels.shape[0], 1), -100, ms.int32)
    return ops.concat((labels[:, 1:].astype(ms.int32), tail), 1).reshape(-1)


def lm_output(hidden, lm_head, embedding_weight, labels, tied_matmul=None, fused_loss=None, use_host=False):
    """Logits [batch, seq, vocab] from the final hidden states (through ``lm_head`` or the tied
    embedding), and ``(loss, logits)`` when ``labels`` are given.

    Args:
        tied_matmul: the ``MatMul(transpose_b=True)`` of a tied head (a model's own, so that it can be
            sharded; None: a shared one).
        fused_loss: a :class:`LinearCrossEntropy` to compute the loss with (a model in training on CPU),
            giving ``(loss, None)``: no logits. Used when the head is the plain product (tied, or a whole
            bias-free ``Linear``; a tuner's or a split head is not).
        use_host: a tied head's product may run the host kernel (``product_nt``): the model is outside
            training on a CPU with the kernels (an own ``lm_head`` decides this itself).
    """
    if labels is not None and fused_loss is not None:
        if lm_head is None or (isinstance(lm_head, Linear) and lm_head.whole_product and lm_head.bias is None):
            weight = embedding_weight if lm_head is None else lm_head.weight
            rows = hidden.reshape(-1, hidden.shape[-1]).astype(ms.float32)
            loss = fused_loss(rows, weight.astype(ms.float32), shifted_labels(labels, hidden.shape[1]))[0]
            return loss, None
    if lm_head is None:
        # tied weights [vocab, hidden]: transpose inside the matmul (``weight.T`` would copy 100+ MB per call)
        shape = hidden.shape
        matmul = _MATMUL_NT if tied_matmul is None else tied_matmul
        logits = product_nt(hidden.reshape(-1, shape[-1]), embedding_weight, matmul, use_host)
        logits = logits.reshape(shape[:-1] + (-1,))
    else:
        logits = lm_head(hidden)
    if labels is None:
        return logits
    return causal_lm_loss(logits, labels), logits


def classifier_output(hidden, score, input_ids, labels, config):
    """Logits [batch, num_labels] of the last non-padding token, and ``(loss, logits)`` with ``labels``."""
    logits = score(last_token_pool(hidden, input_ids, config.pad_token_id))
    if labels is None:
        return logits
    return sequence_classification_loss(logits, labels, config.num_labels, config.problem_type), logits


def token_classification_output(logits, labels):
    """Logits [batch, seq, num_labels] of a token-classification head, and ``(loss, logits)`` with ``labels``
    [batch, seq]: mean cross entropy over the labels that are not -100 (transformers' ``ForTokenClassification``)."""
    if labels is None:
        return logits
    num_labels = logits.shape[-1]
    return _mean_cross_entropy(logits.reshape(-1, num_labels).astype(ms.float32),
                               labels.reshape(-1).astype(ms.int32)), logits


def question_answering_output(logits, start_positions, end_positions):
    """``(start_logits, end_logits)`` [batch, seq] from a span head's logits [batch, seq, 2], and
    ``(loss, start_logits, end_logits)`` with both position tensors [batch] (or [batch, 1]).

    The loss is transformers' ``ForQuestionAnsweringLoss``: positions are clamped to [0, seq], position
    ``seq`` (a span outside the input) is ignored, and the loss is the mean of the start and end cross
    entropies (each averaged over the rows not ignored)."""
    start_logits, end_logits = logits[..., 0], logits[..., 1]
    if start_positions is None or end_positions is None:
        return start_logits, end_logits
    seq = start_logits.shape[1]

    def span_loss(span_logits, positions):
        positions = ops.clip(positions.reshape(-1).astype(ms.int32), 0, seq)
        kept = (positions != seq).astype(ms.float32)
        # the ignored index ``seq`` is one past the last class: gather a valid column, then mask it out
        picked = ops.gather_elements(ops.log_softmax(span_logits.astype(ms.float32), -1), 1,
                                     ops.minimum(positions, seq - 1).reshape(-1, 1)).reshape(-1)
        return -(picked * kept).sum() / ops.maximum(kept.sum(), 1.0)

    loss = (span_loss(start_logits, start_positions) + span_loss(end_logits, end_positions)) / 2
    return loss, start_logits, end_logits
