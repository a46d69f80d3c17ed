"""Sparse mixture-of-experts feed-forward blocks (Mixtral, Qwen3-MoE, DeepSeek-V3).

A router scores every token against ``num_experts`` experts and keeps the ``top_k`` best; the block's
output is the routing-weighted sum of those experts' gated MLPs (plus, for DeepSeek, always-on shared
experts). Two routers:
- ``softmax`` (Mixtral, Qwen3-MoE; Fedus et al. 2021): softmax over experts, top-k, optionally renormalised
  to sum to 1 (``norm_topk_prob``; Mixtral always renormalises);
- ``sigmoid`` (DeepSeek-V3, Liu et al. 2024): sigmoid scores; the choice adds ``e_score_correction_bias``
  and is limited to the ``topk_group`` best of ``n_group`` expert groups (a group scores the sum of its two
  best); the weights are the chosen (uncorrected) scores, optionally renormalised, times
  ``routed_scaling_factor``.

Experts are held as transformers 5 holds them, two 3-D Parameters per block: ``experts.gate_up_proj``
``[experts, 2 * intermediate, hidden]`` (gate rows first) and ``experts.down_proj``
``[experts, hidden, intermediate]``. Checkpoints with one tensor per expert (what transformers writes by
default, and Hub checkpoints) are fused on load and split again on save (:class:`ExpertLayout`).

Computation is dense: every token goes through every expert and unchosen experts get weight 0. That is
exact (no token is dropped, unlike capacity-based dispatch), needs no data-dependent shapes (one compiled
graph), and costs ``num_experts / top_k`` times the FLOPs of a sparse dispatch; fine for the small expert
counts trained here, and the place to put a grouped-matmul dispatch behind the same Cell on an accelerator.
"""
import re
from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np
import mindspore as ms
from mindspore import Parameter, nn, ops

from ...kernels import host
from ...registry import BLOCKS
from .layers import MS_DTYPES, _placeholder, cast, full
from .mlp import GatedMLP, HostSwiGLU, gated_activation


@dataclass(frozen=True)
class MoeSpec:
    """What a family's config says about its sparse blocks (see the module docstring)."""

    num_experts: int
    top_k: int
    intermediate_size: int
    scoring: str = "softmax"
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    n_group: int = 1
    topk_group: int = 1
    shared_intermediate_size: int = 0
    """Width of the always-on shared experts' MLP (0: none)."""
    correction_bias: bool = False
    """Whether the router has an ``e_score_correction_bias`` (DeepSeek-V3)."""

    def check(self, where: str, experts_field: str) -> None:
        """Raise ``ValueError`` naming the field when the numbers cannot work together.

        Args:
            where: the config class; experts_field: the family's name for the number of experts.
        """
        experts = f"{experts_field} ({self.num_experts})"
        if self.num_experts < 1:
            raise ValueError(f"{where}: {experts_field} must be >= 1, found {self.num_experts}")
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"{where}: num_experts_per_tok ({self.top_k}) must be between 1 and {experts}")
        if self.intermediate_size < 1:
            raise ValueError(f"{where}: the experts' intermediate size must be >= 1, found {self.intermediate_size}")
        if self.n_group < 1 or self.num_experts % self.n_group:
            raise ValueError(f"{where}: n_group ({self.n_group}) must divide {experts}")
        if not 1 <= self.topk_group <= self.n_group:
            raise ValueError(f"{where}: topk_group ({self.topk_group}) must be between 1 and n_group ({self.n_group})")
        if self.n_group > 1 and self.num_experts // self.n_group < 2:
            raise ValueError(f"{where}: each of the n_group ({self.n_group}) groups needs >= 2 experts (a group "
                             f"scores the sum of its two best); found {self.num_experts // self.n_group}")
        if self.n_group > 1 and self.topk_group * (self.num_experts // self.n_group) < self.top_k:
            raise ValueError(f"{where}: topk_group ({self.topk_group}) groups of {self.num_experts // self.n_group} "
                             f"experts hold fewer than num_experts_per_tok ({self.top_k})")


class Router(nn.Cell):
    """Scores tokens against experts: ``weight`` [experts, hidden] (and ``e_score_correction_bias``)."""

    def __init__(self, config, spec: MoeSpec):
        super().__init__()
        self.spec = spec
        self.weight = Parameter(_placeholder((spec.num_experts, config.hidden_size), MS_DTYPES[config.dtype]),
                                name="weight")
        if spec.correction_bias:
            # updated outside the gradient in DeepSeek's training (auxiliary-loss-free balancing); frozen here
            self.e_score_correction_bias = Parameter(_placeholder((spec.num_experts,), ms.float32),
                                                     name="e_score_correction_bias", requires_grad=False)
        else:
            self.e_score_correction_bias = None
        self.matmul_nt = ops.MatMul(transpose_b=True)

    def init_parameters(self, rng: np.random.Generator, std: float) -> Dict[Parameter, np.ndarray]:
        values = {self.weight: rng.normal(0.0, std, self.weight.shape)}
        if self.e_score_correction_bias is not None:
            values[self.e_score_correction_bias] = np.zeros(self.e_score_correction_bias.shape)
        return values

    def construct(self, x):
        """x [tokens, hidden] -> (router logits [tokens, experts] float32, dense routing weights
        [tokens, experts] with zeros for unchosen experts)."""
        spec = self.spec
        logits = self.matmul_nt(cast(x, ms.float32), cast(self.routing_weight(), ms.float32))
        if spec.scoring == "softmax":
            scores = ops.softmax(logits, -1)
            choice = scores
        else:
            scores = ops.sigmoid(logits)
            choice = scores if self.e_score_correction_bias is None else scores + self.e_score_correction_bias
        if spec.n_group > 1:
            choice = self._limit_to_groups(choice)
        _, index = ops.topk(choice, spec.top_k, dim=-1)  # [tokens, top_k]
        chosen = ops.one_hot(index, spec.num_experts, ops.ones((), ms.float32), ops.zeros((), ms.float32)).sum(1)
        weights = scores * chosen  # [tokens, experts]
        if spec.norm_topk_prob:
            denominator = weights.sum(-1, keepdims=True)
            weights = weights / (denominator + 1e-20) if spec.scoring == "sigmoid" else weights / denominator
        if spec.routed_scaling_factor != 1.0:
            weights = weights * spec.routed_scaling_factor
        return logits, weights

    def routing_weight(self):
        """The [experts, hidden] scoring matrix (a LoRA layer adds its update here)."""
        return self.weight

    def _limit_to_groups(self, choice):
        spec = self.spec
        tokens, size = choice.shape[0], spec.num_experts // spec.n_group
        grouped = choice.reshape(tokens, spec.n_group, size)
        group_scores = ops.topk(grouped, 2, dim=-1)[0].sum(-1)  # [tokens, n_group]
        _, best = ops.topk(group_scores, spec.topk_group, dim=-1)
        keep = ops.one_hot(best, spec.n_group, ops.ones((), ms.float32), ops.zeros((), ms.float32)).sum(1)
        keep = keep.reshape(tokens, spec.n_group, 1).broadcast_to((tokens, spec.n_group, size))
        # a full-shape -inf: semi-automatic parallelism has no Select with broadcasting
        return ops.where(keep.reshape(tokens, spec.num_experts) > 0, choice, full(choice.shape, -np.inf, choice.dtype))


class Experts(nn.Cell):
    """``num_experts`` gated MLPs in two 3-D Parameters (transformers 5's layout, see the module doc)."""

    per_expert = False
    """Compute with one batched product per expert (:meth:`_per_expert`) instead of the folded 2-D products."""

    def __init__(self, config, spec: MoeSpec):
        super().__init__()
        dtype = MS_DTYPES[config.dtype]
        self.num_experts, self.width, self.hidden = spec.num_experts, spec.intermediate_size, config.hidden_size
        self.gate_up_proj = Parameter(_placeholder((self.num_experts, 2 * self.width, self.hidden), dtype),
                                      name="gate_up_proj")
        self.down_proj = Parameter(_placeholder((self.num_experts, self.hidden, self.width), dtype), name="down_proj")
        self.matmul_nt = ops.MatMul(transpose_b=True)
        # the per-expert form of the same sum (see _per_expert), chosen by mindformers.parallel.shard
        self.gate_up_matmul = ops.BatchMatMul(transpose_b=True)
        self.down_matmul = ops.BatchMatMul(transpose_b=True)
        self.host_swiglu = HostSwiGLU() if host.enabled() else None

    def init_parameters(self, rng: np.random.Generator, std: float) -> Dict[Parameter, np.ndarray]:
        return {p: rng.normal(0.0, std, p.shape) for p in (self.gate_up_proj, self.down_proj)}

    def construct(self, x, weights):
        """x [tokens, hidden], weights [tokens, experts] -> sum_e weights[:, e] * expert_e(x)."""
        if self.per_expert:
            return self._per_expert(x, weights)
        tokens = x.shape[0]
        experts, width, hidden = self.num_experts, self.width, self.hidden
        gate_up_proj, down_proj = self.expert_weights()
        # every expert's gate and up projections in one product: [tokens, experts * 2 * width]
        gate_up = self.matmul_nt(x, gate_up_proj.reshape(experts * 2 * width, hidden))
        gate_up = gate_up.reshape(tokens, experts, 2 * width)
        act = gated_activation(gate_up, width, self.host_swiglu)  # [tokens, experts, width]
        # weighting before the (linear) down projection folds the sum over experts into one product
        act = act * cast(weights, act.dtype).expand_dims(-1)
        down = down_proj.swapaxes(1, 2).reshape(experts * width, hidden)
        return ops.matmul(act.reshape(tokens, experts * width), down)

    def _per_expert(self, x, weights):
        """The same sum with one batched product per expert, the 3-D weights used as they are stored.

        Semi-automatic parallelism splits a Parameter only where an op with a strategy reads it directly; in
        the folded form above the weights reach their products through reshapes and would stay whole. Here
        ``gate_up_matmul`` / ``down_matmul`` read them, so experts split by expert_parallel and widths by
        model_parallel (mindformers.parallel.shard sets ``per_expert`` and the strategies). Same result up to
        float rounding (the sum over experts is a separate reduction).
        """
        tokens = x.shape[0]
        experts, width, hidden = self.num_experts, self.width, self.hidden
        gate_up_proj, down_proj = self.expert_weights()
        x = x.reshape(1, tokens, hidden).broadcast_to((experts, tokens, hidden))
        gate_up = self.gate_up_matmul(x, gate_up_proj)  # [experts, tokens, 2 * width]
        act = gated_activation(gate_up, width, self.host_swiglu)  # [experts, tokens, width]
        act = act * cast(weights, act.dtype).swapaxes(0, 1).expand_dims(-1)  # weights [experts, tokens, 1]
        return self.down_matmul(act, down_proj).sum(0)  # [experts, tokens, hidden] -> [tokens, hidden]

    def take_compute(self, base: "Experts") -> None:
        """Use ``base``'s primitives and form (a wrapper built without ``__init__`` keeps their strategies)."""
        self.matmul_nt, self.gate_up_matmul, self.down_matmul = base.matmul_nt, base.gate_up_matmul, base.down_matmul
        self.per_expert = base.per_expert
        self.host_swiglu = base.host_swiglu

    def expert_weights(self):
        """``(gate_up_proj, down_proj)`` as the computation uses them (a LoRA layer adds its updates here)."""
        return self.gate_up_proj, self.down_proj


@BLOCKS.register
class SparseMoeBlock(nn.Cell):
    """Router + experts (+ DeepSeek's shared experts). Returns ``(output, router_logits)``: the decoder
    layer passes the logits up so the model can add the load-balancing loss."""

    returns_router_logits = True

    def __init__(self, config, layer_idx: int = 0):
        super().__init__()
        spec = config.moe_spec()
        self.gate = Router(config, spec)
        self.experts = Experts(config, spec)
        self.shared_experts = (GatedMLP(config, layer_idx, spec.shared_intermediate_size)
                               if spec.shared_intermediate_size else None)

    def construct(self, x):
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        logits, weights = self.gate(tokens)
        out = self.experts(tokens, weights).reshape(shape)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out, logits


def load_balancing_loss(router_logits: Tuple, num_experts: int, top_k: int, attention_mask=None):
    """The auxiliary loss of Switch Transformer (Fedus et al. 2021, eqs. 4-6), as transformers'
    ``load_balancing_loss_func`` computes it: ``num_experts * sum_e f_e * P_e`` with ``f_e`` the share of
    top-k assignments and ``P_e`` the mean router probability of expert e, padding tokens excluded.

    WARNING: like transformers, ``f`` and ``P`` are pooled over all MoE layers before the product, so only the
    pooled load is balanced; layers can stay unbalanced in ways that cancel out (the paper applies the loss
    per layer; research/qwen3_moe_pretrain measures the difference).

    Args:
        router_logits: one ``[batch * seq, experts]`` tensor per MoE layer.
        attention_mask: ``[batch, seq]`` (1 = real token) or None.
    Returns:
        float32 scalar.
    """
    counts = ops.zeros((num_experts,), ms.float32)
    probs_sum = ops.zeros((num_experts,), ms.float32)
    rows = ops.zeros((), ms.float32)
    flat_mask = None if attention_mask is None else attention_mask.reshape(-1, 1).astype(ms.float32)
    for logits in router_logits:
        probs = ops.softmax(cast(logits, ms.float32), -1)
        _, index = ops.topk(probs, top_k, dim=-1)
        chosen = ops.one_hot(index, num_experts, ops.ones((), ms.float32), ops.zeros((), ms.float32)).sum(1)
        if flat_mask is None:
            counts = counts + chosen.sum(0)
            probs_sum = probs_sum + probs.sum(0)
            rows = rows + probs.shape[0]
        else:
            counts = counts + (chosen * flat_mask).sum(0)
            probs_sum = probs_sum + (probs * flat_mask).sum(0)
            rows = rows + flat_mask.sum()
    return (counts / rows * (probs_sum / rows)).sum() * num_experts


# ------------------------------------------------------------------------------ checkpoint layouts
@dataclass(frozen=True)
class ExpertLayout:
    """How a family's checkpoints store experts one by one: ``<block>.experts.<e>.<gate|up|down>.weight``.

    Args:
        names: the per-expert gate, up and down projection names (Mixtral ``w1, w3, w2``).
        block_renames: ``(in checkpoint, in the model)`` block names (Mixtral ``block_sparse_moe`` -> ``mlp``).
    """

    names: Tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")
    block_renames: Tuple[Tuple[str, str], ...] = ()

    def _pattern(self):
        names = "|".join(map(re.escape, self.names))
        return re.compile(rf"^(?P<block>.*)\.experts\.(?P<e>\d+)\.(?P<name>{names})\.weight$")

    def fuse(self, state: Dict[str, np.ndarray], fused_shapes: Dict[str, tuple]) -> Dict[str, np.ndarray]:
        """``state`` with per-expert tensors stacked into the model's 3-D Parameters.

        Args:
            fused_shapes: the model's ``<block>.experts.gate_up_proj`` / ``down_proj`` paths and shapes.
        Raises:
            ValueError naming the per-expert tensors missing for a block the checkpoint stores per expert.
        """
        state = dict(state)
        for old, new in self.block_renames:
            state = {k.replace(f".{old}.", f".{new}."): v for k, v in state.items()}
        pattern = self._pattern()
        per_block: Dict[str, Dict[Tuple[int, str], np.ndarray]] = {}
        for key in [k for k in state if pattern.match(k)]:
            m = pattern.match(key)
            per_block.setdefault(m["block"], {})[(int(m["e"]), m["name"])] = state.pop(key)
        gate, up, down = self.names
        for block, tensors in per_block.items():
            path = f"{block}.experts.gate_up_proj"
            if path not in fused_shapes:  # not a block of this model: left for the strict name check
                state.update({self.expert_key(block, e, n): v for (e, n), v in tensors.items()})
                continue
            experts = fused_shapes[path][0]
            missing = [self.expert_key(block, e, n) for e in range(experts) for n in self.names if (e, n) not in tensors]
            if missing:
                shown = ", ".join(missing[:6]) + (f", ... ({len(missing) - 6} more)" if len(missing) > 6 else "")
                raise ValueError(f"the checkpoint stores the experts of {block} one by one but lacks "
                                 f"{len(missing)} expert tensor(s): {shown}")
            extra = sorted({e for e, _ in tensors} - set(range(experts)))
            if extra:
                raise ValueError(f"the checkpoint has experts {extra} in {block}, but the model has {experts} "
                                 f"(experts 0..{experts - 1}); is num_experts / num_local_experts right?")
            state[path] = np.stack([np.concatenate([tensors[(e, gate)], tensors[(e, up)]], 0) for e in range(experts)])
            state[f"{block}.experts.down_proj"] = np.stack([tensors[(e, down)] for e in range(experts)])
        return state

    def split(self, state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The inverse of :meth:`fuse`: one tensor per expert, under the checkpoint's block names."""
        out = {}
        gate, up, down = self.names
        for key, value in state.items():
            if key.endswith(".experts.gate_up_proj"):
                block, width = key[: -len(".experts.gate_up_proj")], value.shape[1] // 2
                for e in range(value.shape[0]):
                    out[self.expert_key(block, e, gate)] = value[e, :width]
                    out[self.expert_key(block, e, up)] = value[e, width:]
            elif key.endswith(".experts.down_proj"):
                block = key[: -len(".experts.down_proj")]
                for e in range(value.shape[0]):
                    out[self.expert_key(block, e, down)] = value[e]
            else:
                out[key] = value
        for old, new in self.block_renames:
            out = {k.replace(f".{new}.", f".{old}.") if _in_moe_block(k, new) else k: v for k, v in out.items()}
        return out

    @staticmethod
    def expert_key(block: str, expert: int, name: str) -> str:
        return f"{block}.experts.{expert}.{name}.weight"


def _in_moe_block(key: str, block: str) -> bool:
    # Mixtral: only the sparse block is renamed (its router and experts); every Mixtral layer has one
    return f".{block}.experts." in key or f".{block}.gate." in key


def fused_expert_shapes(model: nn.Cell) -> Dict[str, tuple]:
    """``<block>.experts.gate_up_proj`` path -> shape for every expert block of ``model``."""
    return {f"{name}.gate_up_proj": tuple(cell.gate_up_proj.shape)
            for name, cell in model.cells_and_names() if isinstance(cell, Experts)}

