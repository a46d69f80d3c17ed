"""LoRA on Parameters that are not a linear layer of their own: MoE experts and routers (PEFT's
``target_parameters``, its ``lora.ParamWrapper``).

transformers 5 keeps a block's experts in two 3-D Parameters (``experts.gate_up_proj`` [E, 2I, H],
``experts.down_proj`` [E, H, I]) and the router in ``gate.weight`` [E, H]. PEFT 0.21 adapts a 3-D
Parameter ``[E, out, in]`` with one factor pair for all experts:

    lora_A [r * E, in]   (expert e: rows e*r .. e*r + r - 1)
    lora_B [out, r * E]  (expert e: columns e, E + e, 2E + e, ... : B is read as [out, r, E])
    W_e += scaling * B_e @ A_e

and a 2-D one like a linear layer (``W += scaling * B @ A``). Several Parameters of one module nest one
wrapper each, in the order the module registers them, so with both expert tensors adapted the file keys are
``experts.base_layer.lora_A`` (gate_up_proj, the inner one) and ``experts.lora_A`` (down_proj). Here the
factors live under the same paths in memory (``experts.base_layer.lora_A.<adapter>.weight``), so the PEFT
key mapping of :mod:`mindformers.tuners.tuner_model` applies unchanged. The base Parameters keep their names.

As in PEFT, the update is added to the weights (no dropout: it cannot be factored out of the product), and
every adapter of a model must target the same Parameters of a module.
"""
from typing import Dict, Iterable, List, Tuple

import numpy as np
from mindspore import nn, ops

from ...models.common.moe import Experts, Router
from ..tuner_layer import AdapterState, TunerLayer
from .layer import _kaiming_uniform, _set, _Vector


class _Factors(nn.Cell):
    """``lora_A`` / ``lora_B`` of one adapted Parameter, by adapter name."""

    def __init__(self):
        super().__init__()
        self.lora_A = nn.CellDict()
        self.lora_B = nn.CellDict()


class _ParamLora(TunerLayer):
    """Adapters on some Parameters of a cell; mixed into a subclass of the cell's class (see below)."""

    def _init_params_lora(self, base, params: Tuple[str, ...], state: AdapterState) -> None:
        self._init_tuner_layer(state)
        self.adapted = tuple(params)  # in the cell's registration order; the last is PEFT's outer wrapper
        self.lora_A = nn.CellDict()
        self.lora_B = nn.CellDict()
        self.base_layer = _Factors() if len(params) == 2 else None
        self.scaling: Dict[str, Dict[str, float]] = {p: {} for p in params}  # Parameter -> adapter -> value
        self.r: Dict[str, Dict[str, int]] = {p: {} for p in params}
        self.use_dora: Dict[str, bool] = {}

    def _factors(self, param: str):
        return self.base_layer if param != self.adapted[-1] else self

    def _shape(self, param: str) -> Tuple[int, int, int]:
        """(experts, out, in) of Parameter ``param`` (experts 1 for a matrix)."""
        shape = tuple(getattr(self, param).shape)
        return (1,) + shape if len(shape) == 2 else shape

    def add_param_adapter(self, param: str, name: str, r: int, scaling: float, init, rng: np.random.Generator) -> None:
        """Create adapter ``name``'s factors on Parameter ``param`` (initialised as PEFT does)."""
        experts, out, fan_in = self._shape(param)
        dtype = getattr(self, param).dtype
        if init == "gaussian":
            a = rng.normal(0.0, 1.0 / r, (r * experts, fan_in))
        else:
            a = _kaiming_uniform(rng, (r * experts, fan_in))
        b = _kaiming_uniform(rng, (out, r * experts)) if init is False else np.zeros((out, r * experts))
        holder = self._factors(param)
        holder.lora_A[name], holder.lora_B[name] = _Vector(a, dtype), _Vector(b, dtype)
        self.scaling[param][name], self.r[param][name] = scaling, r
        self.use_dora[name] = False
        if name not in self.adapter_names:
            self.adapter_names.append(name)

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise ValueError(f"adapter {name!r} is merged into the weights; unmerge it before deleting it")
        for param in self.adapted:
            holder = self._factors(param)
            if name in holder.lora_A:
                del holder.lora_A[name]
                del holder.lora_B[name]
            self.scaling[param].pop(name, None)
            self.r[param].pop(name, None)
        self.use_dora.pop(name, None)
        self.adapter_names.remove(name)

    def _updated(self, param: str):
        """Parameter ``param`` plus the running adapters' updates (in the graph)."""
        weight = getattr(self, param)
        experts, out, fan_in = self._shape(param)
        holder = self._factors(param)
        for name in self.running_adapters():
            if name not in self.r[param]:
                continue
            r = self.r[param][name]
            a, b = holder.lora_A[name].weight, holder.lora_B[name].weight
            if len(weight.shape) == 2:
                delta = ops.matmul(b, a)
            else:  # [E, out, r] @ [E, r, in]
                delta = ops.BatchMatMul()(b.reshape(out, r, experts).transpose(2, 0, 1), a.reshape(experts, r, fan_in))
            weight = weight + delta * self.scaling[param][name]
        return weight

    def _delta(self, param: str, name: str) -> np.ndarray:
        """scaling * B A of adapter ``name`` on ``param``, shaped like the Parameter, float64."""
        experts, out, fan_in = self._shape(param)
        r = self.r[param][name]
        holder = self._factors(param)
        a = holder.lora_A[name].weight.asnumpy().astype(np.float64).reshape(experts, r, fan_in)
        b = holder.lora_B[name].weight.asnumpy().astype(np.float64).reshape(out, r, experts).transpose(2, 0, 1)
        delta = (b @ a) * self.scaling[param][name]
        return delta.reshape(getattr(self, param).shape)

    def merge(self, names: Iterable[str]) -> None:
        for name in names:
            if name in self.adapter_names and name not in self.merged_adapters:
                for param in self.adapted:
                    if name in self.r[param]:
                        weight = getattr(self, param)
                        _set(weight, weight.asnumpy().astype(np.float64) + self._delta(param, name))
                self.merged_adapters.append(name)

    def unmerge(self) -> None:
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            for param in self.adapted:
                if name in self.r[param]:
                    weight = getattr(self, param)
                    _set(weight, weight.asnumpy().astype(np.float64) - self._delta(param, name))


class LoraExperts(Experts, _ParamLora):
    """:class:`~mindformers.models.common.moe.Experts` with LoRA on ``gate_up_proj`` and/or ``down_proj``."""

    def __init__(self, base: Experts, params: Tuple[str, ...], state: AdapterState):
        nn.Cell.__init__(self)
        self.num_experts, self.width, self.hidden = base.num_experts, base.width, base.hidden
        self.gate_up_proj, self.down_proj = base.gate_up_proj, base.down_proj
        self.take_compute(base)
        self._init_params_lora(base, params, state)

    def expert_weights(self):
        gate_up = self._updated("gate_up_proj") if "gate_up_proj" in self.adapted else self.gate_up_proj
        down = self._updated("down_proj") if "down_proj" in self.adapted else self.down_proj
        return gate_up, down

    def unwrap(self) -> Experts:
        plain = Experts.__new__(Experts)
        nn.Cell.__init__(plain)
        plain.num_experts, plain.width, plain.hidden = self.num_experts, self.width, self.hidden
        plain.gate_up_proj, plain.down_proj = self.gate_up_proj, self.down_proj
        plain.take_compute(self)
        return plain


class LoraRouter(Router, _ParamLora):
    """:class:`~mindformers.models.common.moe.Router` with LoRA on its scoring matrix ``weight``."""

    def __init__(self, base: Router, params: Tuple[str, ...], state: AdapterState):
        nn.Cell.__init__(self)
        self.spec = base.spec
        self.weight, self.e_score_correction_bias = base.weight, base.e_score_correction_bias
        self.matmul_nt = base.matmul_nt
        self._init_params_lora(base, params, state)

    def routing_weight(self):
        return self._updated("weight")

    def unwrap(self) -> Router:
        plain = Router.__new__(Router)
        nn.Cell.__init__(plain)
        plain.spec, plain.weight, plain.e_score_correction_bias = self.spec, self.weight, self.e_score_correction_bias
        plain.matmul_nt = self.matmul_nt
        return plain


# cell kind -> (its Parameters LoRA may target, in registration order; the LoRA class)
PARAMETER_TARGETS = {
    Experts: (("gate_up_proj", "down_proj"), LoraExperts),
    Router: (("weight",), LoraRouter),
}


def parameter_targets(model: nn.Cell, targets: List[str]) -> Dict[str, Tuple[str, ...]]:
    """Module path -> the Parameters of it ``targets`` names (PEFT's matching: ``"<module>.<param>"`` equals
    a target or ends with ``"." + target``)."""
    found = {}
    for path, cell in model.cells_and_names():
        kind = LoraExperts if isinstance(cell, LoraExperts) else LoraRouter if isinstance(cell, LoraRouter) else type(cell)
        base_kind = {LoraExperts: Experts, LoraRouter: Router}.get(kind, kind)
        if base_kind not in PARAMETER_TARGETS or not path:
            continue
        names = tuple(p for p in PARAMETER_TARGETS[base_kind][0]
                      if any(f"{path}.{p}" == t or f"{path}.{p}".endswith("." + t) for t in targets))
        if names:
            found[path] = names
    return found


def lora_for_parameters(cell: nn.Cell, params: Tuple[str, ...], state: AdapterState, path: str) -> nn.Cell:
    """``cell`` with LoRA slots on ``params`` (an existing LoRA cell must have the same ones)."""
    if isinstance(cell, _ParamLora):
        if cell.adapted != params:
            raise ValueError(f"{path}: its adapters target Parameters {list(cell.adapted)}, the new one {list(params)}; "
                             "every adapter must target the same Parameters of a module (PEFT's rule too)")
        return cell
    return PARAMETER_TARGETS[type(cell)][1](cell, params, state)
