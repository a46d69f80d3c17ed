"""Optimizers and the learning-rate schedule of a run.

The learning rate is an input of every compiled step: the trainer passes ``schedule_factor(step)`` and each
parameter's update uses ``group peak lr * factor``.

WARNING: MindSpore's own optimizers (``nn``, ``experimental.optim``) keep the rate in Parameters that a
compiled graph reads only once, at compile time (measured with 2.10 on CPU: after ``set_data`` or
``assign_value`` to the rate, the compiled step kept the old rate), so their schedules silently stop
working inside ``mindspore.jit``. Hence these small optimizers.

The schedule is a plain function of the step, so a resumed run gets the same rates without any scheduler
state; the optimizer's state is its moments and step counter (``state_parameters``).

An optimizer is called as ``optimizer(grads, lr_factor, constants)`` inside the compiled step, where
``constants = optimizer.step_constants()`` is a tuple of Python values the trainer reads before each step:
each distinct value compiles (once) its own graph, so work that only some steps do (GaLore's SVD every
``update_proj_gap`` steps) is not in the graph of the others.
"""
import math
from typing import Dict, List, Tuple

import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from ..kernels import host
from .args import TrainingArguments


def schedule_factor(step: int, max_steps: int, args: TrainingArguments) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    warmup = args.warmup_steps if args.warmup_steps > 0 else int(math.ceil(args.warmup_ratio * max_steps))
    if step < warmup:
        return (step + 1) / warmup  # HF starts warmup above zero only after the first step; we count it
    if args.lr_scheduler_type in ("constant", "constant_with_warmup"):
        return 1.0
    progress = (step - warmup) / max(1, max_steps - warmup)
    if args.lr_scheduler_type == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))  # cosine


def parameter_groups(model, args: TrainingArguments) -> List[dict]:
    """Trainable parameters in groups: LoRA+ groups when asked, else weight-decayed matrices and
    undecayed vectors (biases, norm weights)."""
    if args.loraplus_lr_ratio:
        from ..tuners import create_optimizer_param_groups

        groups = create_optimizer_param_groups(model, args.learning_rate, args.loraplus_lr_ratio,
                                               weight_decay=args.weight_decay)
        return [{"params": g["params"], "lr": g["lr"], "weight_decay": g["weight_decay"]} for g in groups]
    params = [p for p in model.trainable_params()]
    if not params:
        raise ValueError("the model has no trainable parameters (are all of them frozen?)")
    decay = [p for p in params if len(p.shape) > 1]
    no_decay = [p for p in params if len(p.shape) <= 1]
    groups = [{"params": decay, "lr": args.learning_rate, "weight_decay": args.weight_decay},
              {"params": no_decay, "lr": args.learning_rate, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


# Per-tensor functions applied with HyperMap: the compiler builds one graph per distinct tensor signature
# instead of unrolling every parameter (a Python loop over SmolLM2's 272 tensors took minutes to compile).
_scale = ops.MultitypeFuncGraph("scale")
_square_sum = ops.MultitypeFuncGraph("square_sum")
_adamw_update = ops.MultitypeFuncGraph("adamw_update")
_adamw_kernel = ops.MultitypeFuncGraph("adamw_kernel")
_kernel_square_sum = ops.MultitypeFuncGraph("kernel_square_sum")
_sgd_update = ops.MultitypeFuncGraph("sgd_update")


@_scale.register("Tensor", "Tensor")
def _scale_tensor(factor, x):
    # factor is a [1] or 0-d tensor: as a scalar it keeps x's shape (a 0-d parameter's gradient, such as SWIFT
    # Side's alpha, would otherwise become [1] and no longer fit its parameter)
    return x * factor.reshape(())


@_square_sum.register("Tensor")
def _square_sum_tensor(x):
    return ops.square(x).sum()


@_kernel_square_sum.register("Tensor")
def _kernel_square_sum_tensor(x):
    return host.squared_sum(x)


@_adamw_update.register("Float", "Float", "Float", "Tensor", "Tensor", "Tensor", "Float", "Float", "Tensor", "Tensor",
                        "Tensor", "Tensor")
def _adamw_tensor(beta1, beta2, eps, correction1, correction2_sqrt, factor, peak_lr, decay, param, grad, m, v):
    m_new = beta1 * m + (1.0 - beta1) * grad
    v_new = beta2 * v + (1.0 - beta2) * ops.square(grad)
    update = (m_new / correction1) / (ops.sqrt(v_new) / correction2_sqrt + eps)
    if decay > 0:
        update = update + decay * param
    ops.assign(m, m_new)
    ops.assign(v, v_new)
    ops.assign(param, param - (peak_lr * factor) * update)
    return True


@_adamw_kernel.register("Float", "Float", "Float", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Float", "Float",
                        "Tensor", "Tensor", "Tensor", "Tensor", "Tensor")
def _adamw_kernel_tensor(beta1, beta2, eps, correction1, correction2_sqrt, factor, scale, shared, peak_lr, decay,
                         per_tensor, param, grad, m, v):
    if not param.shape:  # 0-d (SWIFT Side's alpha): the kernel takes tensors with elements
        return _adamw_tensor(beta1, beta2, eps, correction1, correction2_sqrt, factor, peak_lr, decay, param,
                             grad * scale, m, v)
    # shared [8]: (factor, b1, b2, eps, c1, c2_sqrt, 1, grad_scale); per_tensor [8]: (peak lr, 1, .., decay, 1)
    return host.adamw_update(param, grad, m, v, shared * per_tensor)


@_sgd_update.register("Tensor", "Float", "Float", "Tensor", "Tensor")
def _sgd_tensor(factor, peak_lr, decay, param, grad):
    update = grad + decay * param if decay > 0 else grad
    ops.assign(param, param - (peak_lr * factor) * update)
    return True


def scale_all(tensors, factor):
    """``tuple(t * factor for t in tensors)`` without unrolling (inside compiled functions)."""
    return ops.HyperMap()(ops.partial(_scale, factor), tensors)


def global_norm(tensors, fused: bool = False):
    """The L2 norm of all ``tensors`` together; ``fused``: with the host kernel (``host.enabled()``, decided
    outside the compiled function)."""
    return ops.sqrt(ops.addn(ops.HyperMap()(_kernel_square_sum if fused else _square_sum, tensors)))


class _Optimizer(nn.Cell):
    """Parameters from groups ``{"params", "lr", "weight_decay"}``; each keeps its group's peak rate."""

    def __init__(self, groups: List[dict]):
        super().__init__(auto_prefix=False)
        params, lrs, decays = [], [], []
        for group in groups:
            for param in group["params"]:
                params.append(param)
                lrs.append(float(group["lr"]))
                decays.append(float(group.get("weight_decay", 0.0)))
        self.parameters = ParameterTuple(params)
        self.peak_lrs = tuple(lrs)
        self.weight_decays = tuple(decays)
        self.hyper_map = ops.HyperMap()

    def state_parameters(self) -> Dict[str, Parameter]:
        """The optimizer's own tensors by name, for checkpoints."""
        return {}

    def step_constants(self) -> tuple:
        """Compile-time settings of the next step (see the module docstring); none for AdamW and SGD."""
        return ()


class AdamW(_Optimizer):
    """AdamW (Loshchilov & Hutter 2019), as torch.optim.AdamW: decoupled decay ``p -= lr * wd * p``, then
    ``p -= lr * m_hat / (sqrt(v_hat) + eps)`` with bias-corrected moments.

    Called as ``optimizer(grads, factor, constants, grad_scale)``: the gradients are ``grad_scale * grads``
    (the trainer's clipping and token weighting, applied inside the update instead of as passes of their own).
    On CPU each parameter's update is one host kernel (mindformers/kernels); elsewhere MindSpore ops.
    """

    fuses_grad_scale = True

    def __init__(self, groups: List[dict], betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(groups)
        self.beta1, self.beta2, self.eps = float(betas[0]), float(betas[1]), float(eps)
        self.exp_avg = self.parameters.clone(prefix="exp_avg", init="zeros")
        self.exp_avg_sq = self.parameters.clone(prefix="exp_avg_sq", init="zeros")
        self.state_step = Parameter(Tensor(0.0, ms.float32), name="state_step", requires_grad=False)
        self.fused = host.enabled()
        self.per_tensor = tuple(Tensor([lr, 1, 1, 1, 1, 1, decay, 1], ms.float32)
                                for lr, decay in zip(self.peak_lrs, self.weight_decays))
        self.betas_eps = Tensor([self.beta1, self.beta2, self.eps], ms.float32)

    def construct(self, grads, factor, constants=(), grad_scale=None):
        step = self.state_step + 1.0
        ops.assign(self.state_step, step)
        correction1 = 1.0 - ops.pow(self.beta1, step)
        correction2_sqrt = ops.sqrt(1.0 - ops.pow(self.beta2, step))
        if self.fused:
            scale = ops.ones((), ms.float32) if grad_scale is None else grad_scale.reshape(())
            shared = ops.concat((factor.reshape((1,)), self.betas_eps,
                                 ops.stack((correction1.reshape(()), correction2_sqrt.reshape(()),
                                            ops.ones((), ms.float32), scale))))
            kernel = ops.partial(_adamw_kernel, self.beta1, self.beta2, self.eps, correction1, correction2_sqrt,
                                 factor, scale, shared)
            return self.hyper_map(kernel, self.peak_lrs, self.weight_decays, self.per_tensor, self.parameters, grads,
                                  self.exp_avg, self.exp_avg_sq)
        if grad_scale is not None:
            grads = scale_all(grads, grad_scale)
        update = ops.partial(_adamw_update, self.beta1, self.beta2, self.eps, correction1, correction2_sqrt, factor)
        return self.hyper_map(update, self.peak_lrs, self.weight_decays, self.parameters, grads, self.exp_avg,
                              self.exp_avg_sq)

    def state_parameters(self) -> Dict[str, Parameter]:
        state = {p.name: p for p in self.exp_avg}
        state.update({p.name: p for p in self.exp_avg_sq})
        state["state_step"] = self.state_step
        return state


class SGD(_Optimizer):
    """Plain stochastic gradient descent with decoupled weight decay: ``p -= lr * (grad + wd * p)``."""

    def construct(self, grads, factor, constants=()):
        return self.hyper_map(ops.partial(_sgd_update, factor), self.peak_lrs, self.weight_decays, self.parameters,
                              grads)


def build_optimizer(model, args: TrainingArguments) -> _Optimizer:
    """The run's optimizer over the model's trainable parameters."""
    if args.optim == "galore_adamw":  # a training-side tuner: mindformers/tuners/galore
        from ..tuners.galore import build_galore_optimizer

        return build_galore_optimizer(model, args)
    groups = parameter_groups(model, args)
    if args.optim == "adamw":
        return AdamW(groups, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    return SGD(groups)
