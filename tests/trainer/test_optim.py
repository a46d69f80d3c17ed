"""The optimizers against the textbook update (torch.optim.AdamW's algorithm, written in numpy), inside a
compiled step whose learning rate changes every step; and the learning-rate schedules."""
import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn

from mindformers import TrainingArguments
from mindformers.trainer.optim import SGD, AdamW, schedule_factor

FACTORS = [1.0, 0.5, 0.0, 0.25]


class TwoParams(nn.Cell):
    def __init__(self, rng):
        super().__init__()
        self.weight = Parameter(Tensor(rng.normal(size=(3, 4)).astype(np.float32)), name="weight")
        self.bias = Parameter(Tensor(rng.normal(size=(4,)).astype(np.float32)), name="bias")


def run_compiled(optimizer, grads):
    def apply(g, f):
        return optimizer(g, f)

    step = ms.jit(apply)
    for factor, grad in zip(FACTORS, grads):
        step(ms.mutable(tuple(Tensor(g) for g in grad)), Tensor(factor, ms.float32))


def test_adamw_matches_reference_with_changing_rates():
    rng = np.random.default_rng(0)
    cell = TwoParams(rng)
    start = [cell.weight.asnumpy().copy(), cell.bias.asnumpy().copy()]
    grads = [[rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)] for _ in FACTORS]
    groups = [{"params": [cell.weight], "lr": 0.1, "weight_decay": 0.01}, {"params": [cell.bias], "lr": 0.05, "weight_decay": 0.0}]
    optimizer = AdamW(groups, betas=(0.9, 0.95), eps=1e-6)
    run_compiled(optimizer, grads)

    b1, b2, eps = 0.9, 0.95, 1e-6
    for i, (peak, decay) in enumerate([(0.1, 0.01), (0.05, 0.0)]):
        p, m, v = start[i].astype(np.float64), 0.0, 0.0
        for t, (factor, grad) in enumerate(zip(FACTORS, grads), start=1):
            lr, g = peak * factor, grad[i].astype(np.float64)
            p = p * (1 - lr * decay)  # torch.optim.AdamW: decoupled decay first
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        got = [cell.weight, cell.bias][i].asnumpy()
        np.testing.assert_allclose(got, p, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(optimizer.exp_avg[i].asnumpy(), m, rtol=1e-5, atol=1e-7)
    assert float(optimizer.state_step.asnumpy()) == len(FACTORS)
    assert sorted(optimizer.state_parameters()) == ["exp_avg.bias", "exp_avg.weight", "exp_avg_sq.bias",
                                                    "exp_avg_sq.weight", "state_step"]


def test_sgd_with_changing_rates():
    rng = np.random.default_rng(1)
    cell = TwoParams(rng)
    start = cell.weight.asnumpy().copy()
    grads = [[rng.normal(size=(3, 4)).astype(np.float32), np.zeros(4, np.float32)] for _ in FACTORS]
    run_compiled(SGD([{"params": [cell.weight, cell.bias], "lr": 0.2, "weight_decay": 0.0}]), grads)
    expected = start - sum(0.2 * f * g[0] for f, g in zip(FACTORS, grads))
    np.testing.assert_allclose(cell.weight.asnumpy(), expected, rtol=1e-5, atol=1e-6)



def test_scaled_gradients_keep_the_shape_of_a_scalar_parameter():
    """The trainer scales gradients by a [1] token count; a 0-d parameter (SWIFT Side's alpha) keeps 0-d."""
    from mindformers.trainer.optim import scale_all

    scalar = Parameter(Tensor(np.float32(0.5)), name="alpha")
    optimizer = AdamW([{"params": [scalar], "lr": 0.1, "weight_decay": 0.0}])

    def apply(g, tokens):
        scaled = scale_all(g, 1.0 / tokens)
        optimizer(scaled, Tensor(1.0, ms.float32))
        return scaled

    scaled = ms.jit(apply)(ms.mutable((Tensor(np.float32(4.0)),)), Tensor([2.0], ms.float32))
    assert scaled[0].shape == () and float(scaled[0].asnumpy()) == 2.0
    assert scalar.shape == () and abs(float(scalar.asnumpy()) - 0.4) < 1e-6  # Adam's first step: lr * sign(grad)

@pytest.mark.parametrize("kind, expected", [
    ("linear", [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]),
    ("cosine", [0.5, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]),
    ("constant_with_warmup", [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]),
])
def test_schedules(kind, expected):
    args = TrainingArguments(warmup_steps=2, lr_scheduler_type=kind)
    assert [schedule_factor(s, 6, args) for s in range(6)] == pytest.approx(expected)
    ratio = TrainingArguments(warmup_ratio=0.5, lr_scheduler_type="linear")
    assert [schedule_factor(s, 4, ratio) for s in range(4)] == pytest.approx([0.5, 1.0, 1.0, 0.5])
