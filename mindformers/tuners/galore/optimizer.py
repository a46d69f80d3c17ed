"""AdamW with GaLore's gradient projection (Zhao et al. 2024, Algorithm 2; galore_torch's GaLoreProjector).

For a target weight W [m, n] with gradient G, the projection P is computed from G every ``update_proj_gap``
steps (at steps 0, gap, 2 gap, ... of the optimizer's counter), from the truncated SVD G = U S V^T:

- right (``std`` when m >= n): P = V[:, :r]^T [r, n]; R = G P^T [m, r]; back: N P [m, n]
- left (``std`` when m < n):   P = U[:, :r] [m, r];   R = P^T G [r, n]; back: P N [m, n]

The Adam moments live in R's shape; N = m_hat / (sqrt(v_hat) + eps) of the projected gradient, and the
weight moves by ``lr * (galore_scale * back(N) + weight_decay * W)`` (this package's AdamW, torch.optim.AdamW's
order; galore_torch folds the bias corrections into the step size and decays after the update, which differs
by eps * (1 - sqrt(1 - beta2^t)) in the denominator and an O(lr^2) decay term). Moments are kept across a new
projection, as in the paper. Other parameters take plain AdamW.

WARNING: singular vectors are defined up to sign, and the moments carry over to the next projection, so the
sign decides the update. Each vector is flipped to make its largest-magnitude entry positive, so every rank
and the numpy reference (tests/tuners/test_galore.py) pick the same one.

The gradient it projects is the trainer's: accumulated over micro-batches, summed over data-parallel ranks
and clipped (``_StepFunctions._update``), so the projection is the same on every rank.
"""
from typing import Dict, List, Tuple

import numpy as np
import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, ops

from ...trainer.optim import _adamw_update, _Optimizer

_galore_update = ops.MultitypeFuncGraph("galore_update")


def right_side(shape, proj_type: str) -> bool:
    """Whether a [m, n] weight is projected from the right (moments [m, r]) rather than the left ([r, n])."""
    rows_ge = shape[0] >= shape[1]
    return {"std": rows_ge, "reverse_std": not rows_ge, "right": True, "left": False}[proj_type]


def projected_shape(shape, rank: int, proj_type: str) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """(projection shape, moment shape) of a [m, n] weight."""
    m, n = shape
    r = min(rank, m, n)
    return ((r, n), (m, r)) if right_side(shape, proj_type) else ((m, r), (r, n))


def _canonical(vectors, axis: int):
    """Flip each singular vector (columns: axis 0 holds the entries) so its largest-magnitude entry is > 0."""
    index = ops.argmax(ops.abs(vectors), dim=axis, keepdim=True)
    pick = ops.gather_elements(vectors, axis, index)
    return vectors * ops.select(pick >= 0, ops.ones_like(pick), -ops.ones_like(pick))


@_galore_update.register("String", "Bool", "Float", "Float", "Float", "Float", "Tensor", "Tensor", "Tensor",
                         "Float", "Float", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor")
def _galore_tensor(proj_type, refresh, scale, beta1, beta2, eps, correction1, correction2_sqrt, factor, peak_lr,
                   decay, param, grad, proj, m, v):
    right = right_side(grad.shape, proj_type)
    if refresh:
        _, u, vecs = ops.svd(grad, full_matrices=False)  # grad = u diag(s) vecs^T
        if right:
            r = proj.shape[0]
            new = ops.transpose(_canonical(vecs[:, :r], 0), (1, 0))  # [r, n]
        else:
            r = proj.shape[1]
            new = _canonical(u[:, :r], 0)  # [m, r]
        ops.assign(proj, new)
        proj = new
    low = ops.matmul(grad, ops.transpose(proj, (1, 0))) if right else ops.matmul(ops.transpose(proj, (1, 0)), grad)
    m_new = beta1 * m + (1.0 - beta1) * low
    v_new = beta2 * v + (1.0 - beta2) * ops.square(low)
    normed = (m_new / correction1) / (ops.sqrt(v_new) / correction2_sqrt + eps)
    update = (ops.matmul(normed, proj) if right else ops.matmul(proj, normed)) * scale
    if decay > 0:
        update = update + decay * param
    ops.assign(m, m_new)
    ops.assign(v, v_new)
    ops.assign(param, param - (peak_lr * factor) * update)
    return True


class GaLoreAdamW(_Optimizer):
    """AdamW whose first ``len(galore)`` parameters (2-D weights) keep GaLore-projected moments.

    Args:
        galore: the group of projected weights ``{"params", "lr", "weight_decay"}``.
        groups: the other parameters' groups (plain AdamW).
        config: the :class:`GaLoreConfig` (rank, update_proj_gap, galore_scale, proj_type).
        betas, eps: Adam's.
    """

    def __init__(self, galore: dict, groups: List[dict], config, betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__([galore] + groups)
        self.config = config
        self.count = len(galore["params"])
        self.beta1, self.beta2, self.eps = float(betas[0]), float(betas[1]), float(eps)
        self.scale, self.proj_type, self.gap = float(config.galore_scale), config.proj_type, int(config.update_proj_gap)
        params = list(self.parameters)
        projections, moment_shapes = [], []
        for param in params[: self.count]:
            if len(param.shape) != 2:
                raise ValueError(f"GaLore projects 2-D weights; {param.name} has shape {tuple(param.shape)}")
            proj_shape, moment_shape = projected_shape(tuple(param.shape), config.rank, config.proj_type)
            projections.append(Parameter(Tensor(np.zeros(proj_shape, np.float32)), name=f"galore_proj.{param.name}",
                                         requires_grad=False))
            moment_shapes.append(moment_shape)
        moment_shapes += [tuple(p.shape) for p in params[self.count:]]

        def zeros(prefix):
            return ParameterTuple([Parameter(Tensor(np.zeros(shape, np.float32)), name=f"{prefix}.{p.name}",
                                             requires_grad=False) for p, shape in zip(params, moment_shapes)])

        self.projections = ParameterTuple(projections)
        self.exp_avg, self.exp_avg_sq = zeros("exp_avg"), zeros("exp_avg_sq")
        self.state_step = Parameter(Tensor(0.0, ms.float32), name="state_step", requires_grad=False)

    def step_constants(self) -> tuple:
        """(whether this step recomputes the projections,): at steps 0, gap, 2 gap, ..."""
        return (int(self.state_step.asnumpy()) % self.gap == 0,)

    def construct(self, grads, factor, constants=()):
        refresh = constants[0] if constants else False
        k = self.count
        step = self.state_step + 1.0
        ops.assign(self.state_step, step)
        correction1 = 1.0 - ops.pow(self.beta1, step)
        correction2_sqrt = ops.sqrt(1.0 - ops.pow(self.beta2, step))
        projected = self.hyper_map(
            ops.partial(_galore_update, self.proj_type, refresh, self.scale, self.beta1, self.beta2, self.eps,
                        correction1, correction2_sqrt, factor),
            self.peak_lrs[:k], self.weight_decays[:k], self.parameters[:k], grads[:k], self.projections,
            self.exp_avg[:k], self.exp_avg_sq[:k])
        if len(self.peak_lrs) == k:  # every parameter projected
            return projected
        plain = self.hyper_map(
            ops.partial(_adamw_update, self.beta1, self.beta2, self.eps, correction1, correction2_sqrt, factor),
            self.peak_lrs[k:], self.weight_decays[k:], self.parameters[k:], grads[k:], self.exp_avg[k:],
            self.exp_avg_sq[k:])
        return projected, plain

    def state_parameters(self) -> Dict[str, Parameter]:
        state = {p.name: p for p in self.exp_avg}
        state.update({p.name: p for p in self.exp_avg_sq})
        state.update({p.name: p for p in self.projections})
        state["state_step"] = self.state_step
        return state


def state_bytes(shapes: Dict[str, Tuple[int, ...]], targets: List[str], config, bytes_per_value: int = 4
                ) -> Tuple[int, int]:
    """(AdamW's, GaLore-AdamW's) optimizer-state bytes for parameters of ``shapes`` when the weights named in
    ``targets`` are projected: AdamW keeps 2 moments of every shape; GaLore keeps 2 projected moments and the
    projection for each target, 2 full moments for the rest (the step counter left out of both)."""
    adamw = galore = 0
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        adamw += 2 * size
        if name in targets:
            proj, moment = projected_shape(shape, config.rank, config.proj_type)
            galore += 2 * int(np.prod(moment)) + int(np.prod(proj))
        else:
            galore += 2 * size
    return adamw * bytes_per_value, galore * bytes_per_value
